"""Progress bars: on a terminal only.

Written to a log file or a CI console, a progress bar's carriage-return frames pile up into
one unreadable line per update; there the loops log plain lines instead (the Trainer one per
epoch), and no bar is drawn.
"""
from tqdm import tqdm


def progress_bar(iterable=None, show=True, **kwargs):
    """A tqdm bar when `show` and standard error is a terminal; a silent pass-through otherwise."""
    return tqdm(iterable, disable=None if show else True, **kwargs)
