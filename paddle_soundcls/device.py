import paddle


def set_device(use_gpu):
    """Run on the GPU when asked and possible; asking for it on a CPU-only build is an error."""
    if use_gpu:
        if not paddle.is_compiled_with_cuda():
            raise RuntimeError('use_gpu=True, but this PaddlePaddle build has no CUDA support. Install '
                               'paddlepaddle-gpu, or pass use_gpu=False to run on the CPU.')
        if paddle.device.cuda.device_count() == 0:
            raise RuntimeError('use_gpu=True, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES and '
                               'the driver), or pass use_gpu=False to run on the CPU.')
        paddle.set_device('gpu')
    else:
        paddle.set_device('cpu')
