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
    """Run an example script's main(): an error of the user's data, files or setup is one line on
    stderr and exit status 2, not a traceback."""
    try:
        return main()
    except (ValueError, RuntimeError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
