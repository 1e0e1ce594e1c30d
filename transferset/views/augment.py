"""Augmentation as data: a spec parsed from a small grammar, integer parameters drawn
per (row, view) by a pure function, and `apply(images, params)`, pure and deterministic.

The grammar (`--augment`), ops separated by commas, applied left to right:

    random-resized-crop(SIZE[,scale=LO-HI][,ratio=LO-HI])
        a box of LO..HI of the image's area with aspect ratio (w/h) in LO..HI (drawn
        log-uniformly), resized to SIZE x SIZE (bilinear). Defaults scale=0.08-1,
        ratio=0.75-1.3333333333333333 (torchvision's); 10 tries, then the central box.
        Params: top, left, height, width (pixels of its input).
    hflip[(p=P)]
        mirror left-right with probability P (default 0.5). Params: 1 or 0.
    shift(N)   (also: jitter(N))
        move the image by dy, dx in -N..N whole pixels, uniformly; what moves in is 0
        (Hinton et al.'s MNIST "jittered by up to two pixels"). Params: dy, dx.
    rotate(DEG)
        a small affine: rotate about the centre by -DEG..DEG degrees (in tenths of a degree,
        uniformly), bilinear, 0 outside. Params: the angle in tenths of a degree.
    color-jitter(brightness=B,contrast=C,saturation=S)
        torchvision's colour factors on the pixels (transferset/views/color.py). Params: each
        named factor in thousandths.

Parameters are integers (pixels, flags), so they are stored exactly (int16 per
view) and a stored view replays bit for bit: the same params on the same decoded
input give the same float32 tensor. `apply` uses only elementwise float32 ops,
flips, exact integer shifts and `grid_sample` (no reductions, no batch-size
dependent kernels), so a row's result does not depend on the rows batched with it.

Augmentations act on the model's input tensor [N, C, H, W] (after the input spec's
scale, mean and std): shift's 0 is therefore the mean colour of a normalised input
and 0 of an unnormalised one. color-jitter alone works on the pixels (it undoes the mean and
std, `Augmentation.for_input`, and redoes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transferset.errors import UserError
from transferset.views.draws import uniforms

MAX_SIZE = 4096
MAX_SHIFT = 64
MAX_DEGREES = 180
TRIES = 10  # random-resized-crop attempts before the central box (torchvision's)


def _number(value: float) -> str:
    """A float as the shortest text that reads back as the same float."""
    return repr(float(value)).removesuffix(".0")


@dataclass(frozen=True)
class RandomResizedCrop:
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    count = 4

    @property
    def text(self) -> str:
        return (f"random-resized-crop({self.size},scale={_number(self.scale[0])}-{_number(self.scale[1])},"
                f"ratio={_number(self.ratio[0])}-{_number(self.ratio[1])})")

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.size, self.size

    def draw(self, seed: int, keys: np.ndarray, views: np.ndarray, stream: int, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        u = uniforms(seed, keys, views, stream, 4 * TRIES).reshape(len(keys), len(views), TRIES, 4)
        area = height * width * (self.scale[0] + u[..., 0] * (self.scale[1] - self.scale[0]))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(log_lo + u[..., 1] * (log_hi - log_lo))
        w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = np.floor(u[..., 2] * (height - h + 1)).astype(np.int64)
        left = np.floor(u[..., 3] * (width - w + 1)).astype(np.int64)
        first = fits.argmax(axis=-1)[..., None]  # the first try that fits
        pick = lambda a: np.take_along_axis(a, first, axis=-1)[..., 0]  # noqa: E731
        params = np.stack([pick(top), pick(left), pick(h), pick(w)], axis=-1)
        params[~fits.any(axis=-1)] = self._central(height, width)
        return params

    def _central(self, height: int, width: int) -> np.ndarray:
        """torchvision's fallback: the whole image, its aspect clamped into `ratio`."""
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return np.array([(height - h) // 2, (width - w) // 2, h, w], np.int64)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Bilinear resample of each row's box to size x size, by grid_sample (align_corners=False,
        so a box of the whole image at its own size is the identity up to rounding)."""
        n, _, height, width = x.shape
        p = params.to(torch.float64)
        top, left, h, w = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
        # Output pixel j's centre, in [-1, 1], maps to input x = (w/W) * x_out + (2 left + w)/W - 1.
        ax, bx = (w / width).to(torch.float32), ((2 * left + w) / width - 1).to(torch.float32)
        ay, by = (h / height).to(torch.float32), ((2 * top + h) / height - 1).to(torch.float32)
        centres = ((2 * torch.arange(self.size, dtype=torch.float64) + 1) / self.size - 1).to(torch.float32).to(x.device)
        gx = ax[:, None].to(x.device) * centres[None, :] + bx[:, None].to(x.device)  # [n, S]
        gy = ay[:, None].to(x.device) * centres[None, :] + by[:, None].to(x.device)
        grid = torch.stack([gx[:, None, :].expand(n, self.size, self.size), gy[:, :, None].expand(n, self.size, self.size)], dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class HorizontalFlip:
    p: float = 0.5
    count = 1

    @property
    def text(self) -> str:
        return f"hflip(p={_number(self.p)})"

    def output_size(self, size):
        return size

    def draw(self, seed, keys, views, stream, size) -> np.ndarray:
        return (uniforms(seed, keys, views, stream, 1) < self.p).astype(np.int64)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        flip = params[:, 0].to(x.device).bool().view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


@dataclass(frozen=True)
class Shift:
    pixels: int
    count = 2

    @property
    def text(self) -> str:
        return f"shift({self.pixels})"

    def output_size(self, size):
        return size

    def draw(self, seed, keys, views, stream, size) -> np.ndarray:
        if self.pixels >= min(size):
            raise UserError(f"--augment shift({self.pixels}) moves the whole {size[0]}x{size[1]} image out; N must be in 0..{min(size) - 1}")
        return np.floor(uniforms(seed, keys, views, stream, 2) * (2 * self.pixels + 1)).astype(np.int64) - self.pixels

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Exact integer shifts: a zero-padded copy, one slice per distinct (dy, dx)."""
        n = self.pixels
        height, width = x.shape[-2:]
        padded = F.pad(x, (n, n, n, n))
        out = torch.empty_like(x)
        shifts = params.cpu().numpy()
        for dy, dx in {(int(a), int(b)) for a, b in shifts}:
            rows = torch.from_numpy(np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))).to(x.device)
            out[rows] = padded[rows, :, n - dy : n - dy + height, n - dx : n - dx + width]
        return out


@dataclass(frozen=True)
class Rotate:
    degrees: int
    count = 1

    @property
    def text(self) -> str:
        return f"rotate({self.degrees})"

    def output_size(self, size):
        return size

    def draw(self, seed, keys, views, stream, size) -> np.ndarray:
        """Tenths of a degree, uniform in -10 D..10 D (integers: stored exactly)."""
        steps = 10 * self.degrees
        return np.floor(uniforms(seed, keys, views, stream, 1) * (2 * steps + 1)).astype(np.int64) - steps

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Rotate about the image centre by params / 10 degrees (counter-clockwise on screen), bilinear,
        0 outside. Output pixel (i, j) samples input (u, v) = R(-a) (j - cx, i - cy) + (cx, cy)."""
        n, _, height, width = x.shape
        angle = params[:, 0].to(torch.float64) * (math.pi / 1800)
        cos, sin = torch.cos(angle).to(torch.float32).to(x.device), torch.sin(angle).to(torch.float32).to(x.device)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        dx = (torch.arange(width, dtype=torch.float32, device=x.device) - cx)[None, None, :]  # [1, 1, W]
        dy = (torch.arange(height, dtype=torch.float32, device=x.device) - cy)[None, :, None]  # [1, H, 1]
        c, s = cos[:, None, None], sin[:, None, None]
        u = c * dx - s * dy + cx  # [n, H, W] input column
        v = s * dx + c * dy + cy  # input row
        grid = torch.stack([(2 * u + 1) / width - 1, (2 * v + 1) / height - 1], dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class Augmentation:
    """A parsed --augment: its ops, in order; `text` is canonical (recorded in the provenance)."""

    ops: tuple

    @property
    def text(self) -> str:
        return ",".join(op.text for op in self.ops)

    @property
    def count(self) -> int:
        """Integer params per view."""
        return sum(op.count for op in self.ops)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """[C, H, W] of a view of an input of `shape`; inputs that are not images are refused."""
        if len(shape) != 3:
            raise UserError(f"--augment needs image inputs shaped C,H,W; the input shape is {','.join(map(str, shape))} "
                            f"(for MNIST rows of 784 values give --input-shape 1,28,28)")
        size = shape[1:]
        for op in self.ops:
            if hasattr(op, "check_channels"):  # colour ops need 1 or 3 channels
                op.check_channels(shape[0])
            size = op.output_size(size)
        return (shape[0], *size)

    def for_input(self, spec) -> "Augmentation":
        """These ops for inputs normalised by `spec` (an InputSpec): ops defined on pixels (colour)
        learn its mean and std; the others act on the model's input as it is."""
        if spec is None:
            return self
        return Augmentation(tuple(op.for_input(spec) if hasattr(op, "for_input") else op for op in self.ops))

    def draw(self, seed: int, keys: np.ndarray, views: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """int64 [B, V, count]: the params of view views[v] of the row with key keys[b]."""
        size, parts = tuple(shape[1:]), []
        for stream, op in enumerate(self.ops):
            parts.append(op.draw(seed, keys, views, stream, size).reshape(len(keys), len(views), op.count))
            size = op.output_size(size)
        return np.concatenate(parts, axis=-1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x float32 [N, C, H, W], params int [N, count] -> the views, float32 [N, *output_shape]."""
        start = 0
        for op in self.ops:
            x = op.apply(x, params[:, start : start + op.count])
            start += op.count
        return x


from transferset.views.grammar import parse_augment  # noqa: E402,F401  (the grammar builds the ops above)
