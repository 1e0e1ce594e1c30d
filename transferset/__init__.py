"""transferset: offline knowledge distillation.

Data flow of stage 1 (generate):
    sources.py (rows) -> teachers.py (batches -> logits) -> combine.py (targets)
    -> writer.py (Parquet shards) -> manifest.py (the set is complete)
Stage 2 lives in the `train` package and never imports teachers.py.
"""

__version__ = "0.1.0"
