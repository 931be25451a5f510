"""What every entry point does around its work: the command line, the example scripts and the
benchmarks hide third parties' noise and report their users' errors in one line.

Imports nothing heavy (no Paddle), so a script calls silence_third_party_noise() before it
imports Paddle, whose import warns.
"""
import re
import sys
import warnings

# Third-party warnings that say nothing to our users (Paddle on import, and every training epoch).
THIRD_PARTY_NOISE = ('No ccache found', 'When training, we now always track global mean and variance')


def silence_third_party_noise():
    """Hide the third parties' warnings in THIRD_PARTY_NOISE (never ours) at our entry points."""
    for message in THIRD_PARTY_NOISE:
        warnings.filterwarnings('ignore', message=re.escape(message))


def run_script(main):
    """Run an example script's main() under the command line's rule: the package's errors, a
    missing optional package and a path the system refuses are one line on stderr and exit
    status 2; anything else is a bug and shows its traceback."""
    import os

    from .cli.common import run_guarded  # Paddle-free, like this module
    return run_guarded(lambda _args: main(), None, prog=os.path.basename(sys.argv[0]))
