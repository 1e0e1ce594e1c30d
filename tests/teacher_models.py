"""Tiny teacher factories for the tests (imported by name, as users' factories are)."""

import time

import torch


def mlp(seed: int, inputs: int = 64, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))


def tiny_a() -> torch.nn.Module:
    return mlp(1)


def tiny_b() -> torch.nn.Module:
    return mlp(2)


def tiny_rgb() -> torch.nn.Module:
    """For 3x8x8 (RGB) inputs."""
    return mlp(4, inputs=3 * 8 * 8)


def seven_classes() -> torch.nn.Module:
    return mlp(3, classes=7)


class _NaNOnBrightRows(torch.nn.Module):
    """Returns NaN logits for rows whose first pixel is 16 (the fixture sets some)."""

    def __init__(self):
        super().__init__()
        self.inner = mlp(4)

    def forward(self, x):
        out = self.inner(x)
        bad = x.flatten(1)[:, 0] >= 1.0
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)


def nan_teacher() -> torch.nn.Module:
    return _NaNOnBrightRows()


class _Slow(torch.nn.Module):
    """A teacher slow enough (10 ms a batch) for a test to kill generate mid-run."""

    def __init__(self):
        super().__init__()
        self.inner = mlp(5)

    def forward(self, x):
        time.sleep(0.01)
        return self.inner(x)


def slow() -> torch.nn.Module:
    return _Slow()


def not_a_module():
    return "hello"


class PickledStateDict(dict):
    """A state dict saved as a custom class: loading it needs full unpickling."""


class PickledTuple(tuple):
    """A tuple subclass: torch's weights_only loader refuses it, full unpickling builds it."""


class _TinyLM(torch.nn.Module):
    """A causal 'language model' for token sources: position t sees the mean embedding of
    the real tokens 0..t, so its logits [B, L, V] depend on the prefix only."""

    def __init__(self, seed: int, vocab: int = 300, width: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, width)
        self.out = torch.nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.to(torch.float32)[..., None]
        summed = (self.embed(input_ids.long()) * mask).cumsum(dim=1)
        return 3 * self.out(torch.tanh(summed / mask.cumsum(dim=1).clamp(min=1)))


def tiny_lm_a() -> torch.nn.Module:
    return _TinyLM(11)


def tiny_lm_b() -> torch.nn.Module:
    return _TinyLM(12)
