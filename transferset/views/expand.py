"""generate's side of views: a batch of rows -> its V augmented views and their params.

    rows [B, C, H, W]  --(params of (seed, row id, view), augment.apply)-->  views [B*V, C, S, S]

View v of row b sits at b * V + v, so the teachers' logits [K, B*V, C] reshape to
[K, B, V, C] and combine() (which takes any leading shape) gives each view's
combined target. Row ids are the transfer set's `id` values, so a row's views do
not depend on which batch, shard or writer it falls in: a resumed run draws the
same params, and the trainer could redraw them (it reads the stored ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transferset.errors import UserError
from transferset.views.augment import Augmentation, parse_augment
from transferset.views.draws import row_keys


@dataclass(frozen=True)
class ViewPlan:
    views: int
    augmentation: Augmentation
    seed: int

    @classmethod
    def from_options(cls, options: dict, input_spec=None) -> "ViewPlan":
        """`input_spec` (the set's InputSpec): the normalisation colour ops undo to reach the pixels;
        None: the inputs are the pixels."""
        augmentation = parse_augment(options["augment"]).for_input(input_spec)
        return cls(int(options["views"]), augmentation, int(options.get("seed", 0)))

    def check_shape(self, shape: tuple[int, ...] | None) -> None:
        """Views must have the shape of the inputs (the teachers and the student take one shape)."""
        out = self.augmentation.output_shape(tuple(shape or ()))
        if out != tuple(shape):
            raise UserError(f"--augment {self.augmentation.text} makes views of {','.join(map(str, out))} but the input shape is "
                            f"{','.join(map(str, shape))}; make the augmentation output the input size (e.g. "
                            f"random-resized-crop({shape[-1]})) or change --input-shape")

    def params(self, ids: list[str], shape: tuple[int, ...]) -> np.ndarray:
        """int64 [B, V, P]: every view's params, a pure function of (seed, row id, view)."""
        return self.augmentation.draw(self.seed, row_keys(ids), np.arange(self.views, dtype=np.int64), shape)

    def expand(self, x: dict[str, torch.Tensor], ids: list[str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The named input tensor [B, C, H, W] -> its views [B*V, C, H, W] (row-major), and the params [B, V, P]."""
        if len(x) != 1:
            raise UserError(f"--views augments one image input; these inputs are {', '.join(x)}")
        (name, images), = x.items()
        params = self.params(ids, tuple(images.shape[1:]))
        flat = torch.from_numpy(params.reshape(-1, params.shape[-1]))
        views = self.augmentation.apply(images.repeat_interleave(self.views, dim=0), flat)
        return {name: views}, params


def views_options(views: int | None, augment: str | None, seed: int, target_kind: str, target_options: dict) -> tuple[str, dict]:
    """`--views V --augment SPEC` with `--targets dense|topk:K` -> the views kind and its options."""
    if views is None:
        if augment is not None:
            raise UserError("--augment needs --views V (how many augmented views of each row to store)")
        return target_kind, target_options
    if views < 1:
        raise UserError(f"--views {views} must be at least 1 (views stored per row)")
    if augment is None:
        raise UserError("--views needs --augment SPEC, e.g. --augment 'random-resized-crop(224,scale=0.35-1),hflip' (docs/vision.md)")
    if target_kind not in ("dense", "topk"):
        raise UserError(f"--views stores dense or topk:K targets per view, not --targets {target_kind}")
    options = {"views": views, "augment": parse_augment(augment).text, "seed": seed}
    return "views", ({**options, "k": target_options["k"]} if target_kind == "topk" else options)


def views_problems(cfg) -> list[str]:
    """What rules out views for a GenerateConfig, found before --out is claimed."""
    spec = cfg.input_spec
    if spec.tokens or spec.transform is not None:
        return ["--views augments image inputs (C,H,W arrays or an image source), not token inputs or a --transform's output"]
    problems = []
    if cfg.keep_teacher_logits:
        problems.append("--keep-teacher-logits is not stored for views (V x K x C values per row); drop it")
    if cfg.specialists:
        problems.append("--views takes --combine arithmetic or geometric, not specialists")
    try:
        plan = ViewPlan.from_options(cfg.target_options, spec)
        plan.check_shape(spec.shape)
    except UserError as error:
        return problems + [str(error)]
    colour = [op.text for op in plan.augmentation.ops if hasattr(op, "check_channels")]
    if colour and spec.image and abs(spec.scale * 255 - 1) > 1e-9:
        problems.append(f"--augment {colour[0]} works on pixels in [0, 1]: give --input-scale 1/255 for these 8-bit images "
                        f"(and --input-mean/--input-std for the normalisation), not {spec.scale:g}")
    return problems
