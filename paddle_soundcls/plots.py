"""Moved to paddle_soundcls.analysis.plots."""
# moved to paddle_soundcls/analysis/plots.py; this shim goes in the final pass
from .analysis.plots import SILENCE_POWER, TOP_CLASSES, plot_events  # noqa: F401
