"""Where the training loop's figures go: one small interface, `TrainingLog`.

The loop calls scalar(tag, value, step) and close(), nothing else, so another backend
(TensorBoard, MLflow, a CSV file) is one subclass. VisualDL is the one implemented; the
base class writes nothing (use_vdl=False, and every process but rank 0 of a data-parallel run).
"""
import os


class TrainingLog:
    """Scalars by tag ('train/loss', 'eval/acc', ...) and step; this base class drops them."""

    def scalar(self, tag, value, step):
        pass

    def scalars(self, prefix, values, step):
        """Each (name, value) of `values` as `prefix/name`."""
        for name, value in dict(values).items():
            self.scalar(f'{prefix}/{name}', value, step)

    def close(self):
        pass


class VisualDLLog(TrainingLog):
    """VisualDL scalars in `logdir` (`visualdl --logdir DIR` shows them). The writer, and with it
    the log file, is made at the first scalar."""

    def __init__(self, logdir):
        self.logdir = logdir
        self._writer = None

    def scalar(self, tag, value, step):
        if self._writer is None:
            from visualdl import LogWriter
            self._writer = LogWriter(logdir=self.logdir)
        self._writer.add_scalar(tag=tag, value=float(value), step=step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def training_log(use_vdl, checkpoint_dir, is_main=True):
    """The Trainer's log: VisualDL under checkpoint_dir/visualization on the main process with
    use_vdl=True, else one that writes nothing."""
    if use_vdl and is_main:
        return VisualDLLog(os.path.join(checkpoint_dir, 'visualization'))
    return TrainingLog()
