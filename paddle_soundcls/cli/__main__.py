"""`python -m paddle_soundcls.cli`: the same as the `paddle-soundcls` command."""
import sys

from . import main

sys.exit(main())
