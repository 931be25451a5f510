"""Whole archives: embedding folders (Parquet), and running a job over many files (see its modules)."""
