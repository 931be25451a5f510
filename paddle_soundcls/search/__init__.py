"""Similarity search over embedding folders (index.py; archive/parquet.py writes the folders).
Paddle-free; faiss and pyarrow are imported when used. A classifier from a few labelled clips is
paddle_soundcls.fewshot (a Module head, exported and served like any other)."""
from .index import VectorIndex, build_index  # noqa: F401
