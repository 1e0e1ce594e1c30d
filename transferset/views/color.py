"""Colour jitter as data: `color-jitter(brightness=B,contrast=C,saturation=S)`.

torchvision's ColorJitter factors (torchvision/transforms/_functional_tensor.py), on
float pixels in [0, 1], each result clamped to [0, 1]:

    brightness f:  p * f
    contrast   f:  f * p + (1 - f) * mean(grey(p))     (one mean per image; grey(p) = p for 1 channel)
    saturation f:  f * p + (1 - f) * grey(p)           (per pixel; 3 channels only)
    grey(p) = 0.2989 r + 0.587 g + 0.114 b             (torchvision's rgb_to_grayscale)

Each factor is drawn uniformly in [max(0, 1 - X), 1 + X] for `X=value` and
quantised to thousandths, so it is an integer param (int16: 1000 = unchanged).
Only the factors named (and above 0) get a param, applied in the fixed order
brightness, contrast, saturation (torchvision draws a random order per image;
a fixed one keeps the params to the factors alone).

Two differences from torchvision, both for exact replay:
* the pixels are the model's input un-normalised (x * std + mean of the input spec,
  `for_input`), jittered, and normalised again: augmentations act on the model's
  input tensor, and colour is defined on pixels;
* contrast's mean is summed in integers (each grey value rounded to 2^-24), so it is
  the same whatever the batch, the thread count or the device (a float32 sum
  depends on the summation order); it is within 2^-25 of the exact mean.

Saturation needs 3 channels (torchvision and PIL return a grey image unchanged;
here a saturation factor on grey input is refused, so that no params are stored
for an op that does nothing). Contrast takes 1 or 3 channels, brightness any.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from transferset.errors import UserError
from transferset.views.draws import uniforms

FACTORS = ("brightness", "contrast", "saturation")  # the order they are applied in
MAX_JITTER = 10.0  # factor up to 11 = 11000 thousandths, well inside int16
STEPS = 1000  # a factor's param is round(factor * STEPS)
_MEAN_BITS = 24  # contrast's mean: grey values rounded to 2^-24 and summed exactly as int64
_MEAN_LIMIT = float(1 << 14)  # |grey| bound before rounding: 2^24 pixels x 2^38 stays inside int64


def _number(value: float) -> str:
    return repr(float(value)).removesuffix(".0")


@dataclass(frozen=True)
class ColorJitter:
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    # The input spec's normalisation (for_input): pixels = x * std + mean. None: x is the pixels.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def factors(self) -> tuple[str, ...]:
        return tuple(name for name in FACTORS if getattr(self, name) > 0)

    @property
    def count(self) -> int:
        return len(self.factors)

    @property
    def text(self) -> str:
        return f"color-jitter({','.join(f'{name}={_number(getattr(self, name))}' for name in self.factors)})"

    def output_size(self, size):
        return size

    def check_channels(self, channels: int) -> None:
        if "saturation" in self.factors and channels != 3:
            raise UserError(f"--augment {self.text}: saturation needs 3 (RGB) channels, the input has {channels}; "
                            f"drop saturation for grey inputs")
        if "contrast" in self.factors and channels not in (1, 3):
            raise UserError(f"--augment {self.text}: contrast needs 1 or 3 channels, the input has {channels}")

    def for_input(self, spec) -> "ColorJitter":
        """This op for inputs normalised by `spec` (an InputSpec: its mean and std per channel)."""
        return replace(self, mean=spec.mean, std=spec.std)

    def draw(self, seed, keys, views, stream, size) -> np.ndarray:
        """Thousandths of each factor, uniform over the integers of [max(0, 1 - X), 1 + X]."""
        u = uniforms(seed, keys, views, stream, self.count)
        lo = np.array([round(STEPS * max(0.0, 1 - getattr(self, n))) for n in self.factors], np.int64)
        hi = np.array([round(STEPS * (1 + getattr(self, n))) for n in self.factors], np.int64)
        return lo + np.floor(u * (hi - lo + 1)).astype(np.int64)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x float32 [N, C, H, W] (the model's input), params int [N, count] -> jittered, float32."""
        pixels = self._pixels(x)
        for i, name in enumerate(self.factors):
            factor = (params[:, i].to(torch.float64) / STEPS).to(torch.float32).to(x.device).view(-1, 1, 1, 1)
            if name == "brightness":
                pixels = (pixels * factor).clamp(0, 1)
            elif name == "contrast":
                pixels = _blend(pixels, _exact_mean(_grey(pixels)), factor)
            else:
                pixels = _blend(pixels, _grey(pixels), factor)
        return self._normalised(pixels)

    def _per_channel(self, values, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=x.device).view(-1, 1, 1)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.std is not None:
            x = x * self._per_channel(self.std, x)
        if self.mean is not None:
            x = x + self._per_channel(self.mean, x)
        return x

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """InputSpec's normalisation: (p - mean) / std."""
        if self.mean is not None:
            pixels = pixels - self._per_channel(self.mean, pixels)
        if self.std is not None:
            pixels = pixels / self._per_channel(self.std, pixels)
        return pixels


def _grey(p: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W]: torchvision's rgb_to_grayscale for 3 channels, the image itself for 1."""
    if p.shape[1] == 1:
        return p
    return 0.2989 * p[:, 0:1] + 0.587 * p[:, 1:2] + 0.114 * p[:, 2:3]


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: factor * a + (1 - factor) * b, clamped to [0, 1] (separate float32
    ops, no fused multiply-add, so every kernel rounds alike)."""
    return (factor * a + (1.0 - factor) * b).clamp(0, 1)


def _exact_mean(grey: torch.Tensor) -> torch.Tensor:
    """[N, 1, 1, 1] float32: each image's mean, summed in integers (order-free, hence exact replay)."""
    scale = float(1 << _MEAN_BITS)
    fixed = torch.round(grey.clamp(-_MEAN_LIMIT, _MEAN_LIMIT) * scale).to(torch.int64)
    total = fixed.sum(dim=(1, 2, 3), keepdim=True)
    return (total.to(torch.float64) / (scale * grey.shape[-2] * grey.shape[-1])).to(torch.float32)
