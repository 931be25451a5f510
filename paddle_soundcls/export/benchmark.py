"""Moved to paddle_soundcls.analysis.benchmark."""
# moved to paddle_soundcls/analysis/benchmark.py; this shim goes in the final pass
from ..analysis.benchmark import (CALIBRATION_CLIPS, END_TO_END, ENGINES, ORT_DEFAULTS, calibration_clips,  # noqa: F401
                                  engine_key, format_report, machine_info, run, run_export, run_models)
