"""transferset: offline knowledge distillation.

Stage 1 (generate): sources.py (rows) -> teachers/ (named tensors -> logits)
-> combine.py (targets) -> format/codecs/ (columns) -> generate/ (shards, by an
engine) -> format/manifest.py (the set is complete). Stage 2 lives in the
`train` package, reads sets only through `transferset.format`, and never imports
`transferset.teachers`. docs/architecture.md maps every module.
"""

__version__ = "0.1.0"
