"""The errors of this package: each says what is wrong and what to do, naming the file,
argument or field.

Every one is a SoundClsError, so a caller (the command line among them) can tell a problem
the user can fix from a bug: `paddle-soundcls` turns SoundClsErrors into a one-line message
and exit status 2, and lets anything else show its traceback. The classes also derive from
the built-in type they were before (ValueError, or RuntimeError), so existing `except`
clauses keep working.
"""


class SoundClsError(Exception):
    """Base of every error this package raises on purpose."""


class ArgumentError(SoundClsError, ValueError):
    """An argument of a function or a command line that cannot be used as given."""


class AudioError(SoundClsError, ValueError):
    """An input that is not usable audio."""


class DatasetError(SoundClsError, ValueError):
    """A dataset folder, table or file list that cannot be used as given."""


class CheckpointError(SoundClsError, ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something other than arrays and plain containers."""


class NoHeadError(SoundClsError, RuntimeError):
    """A backbone asked for AudioSet logits that was built without its AudioSet head (or whose family has none)."""


class ExportError(SoundClsError, ValueError):
    """An export directory that cannot be used as asked."""


class DownloadError(SoundClsError, RuntimeError):
    """A file could not be fetched or did not pass its check."""


class QuantizationRefused(SoundClsError, RuntimeError):
    """The int8 model disagrees with the float model on the check clips; `summary` holds the figures."""

    def __init__(self, message, summary):
        super().__init__(message)
        self.summary = summary


class ServeError(SoundClsError, ValueError):
    """A serve command line that cannot be carried out."""


class DeviceError(SoundClsError, RuntimeError):
    """A device or precision asked for that this machine or PaddlePaddle build cannot provide."""
