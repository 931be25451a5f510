"""Checkpoint files: read without running code in them, written atomically, and described.

    pdparams    the safe reader of paddle.save pickles (.pdparams, optimizer state)
    torchfile   the safe reader of torch.save files (zip and legacy formats), without PyTorch
    files       read_params (any of those, told apart by content), save_pdparams, resolve
    schema      meta.json and export.json: the fields a Module records, and their migrations

Paddle-free (numpy and the standard library; save_pdparams imports Paddle when called), so
the deployment runtime reads export.json through the same schema.
"""
