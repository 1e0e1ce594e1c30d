"""A student that sleeps in training steps, for tests that kill a run mid-epoch.

The delay comes from the environment (SLOW_STUDENT_DELAY, seconds), not from a flag,
so the run's config, and so its fingerprint, stay those of the fast runs the killed
one is compared with. tests/ is on the path of every process the tests start.
"""

import os
import time

import torch

from train.students import mlp


class Slow(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.delay = float(os.environ.get("SLOW_STUDENT_DELAY", "0"))

    def forward(self, x):
        if self.training and self.delay:
            time.sleep(self.delay)
        return self.inner(x)


def student(num_classes, input_shape, **kwargs):
    return Slow(mlp(num_classes, input_shape, **kwargs))
