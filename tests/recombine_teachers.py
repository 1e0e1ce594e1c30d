"""A third tiny 10-class teacher for tests/test_recombine.py (imported by name, as users' factories are)."""

import torch

from teacher_models import mlp


def tiny_c() -> torch.nn.Module:
    return mlp(6)
