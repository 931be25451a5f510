"""Moved to paddle_soundcls.analysis.complexity."""
# moved to paddle_soundcls/analysis/complexity.py; this shim goes in the final pass
from ..analysis.complexity import (BYTES_PER_VALUE, COUNTING, DCASE_MACS_PER_SECOND,  # noqa: F401
                                   DCASE_PARAM_MEMORY_KB, DEFAULT_NUM_CLASS, DEFAULT_SECONDS,
                                   add_complexity_arguments, check_budget, complexity, format_table,
                                   macs_per_second, run_complexity)
