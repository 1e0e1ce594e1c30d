"""Student networks, the `--student package.module:function` factory, and input jitter.

A student factory is any callable `f(*, num_classes, input_shape, **student_args)`
returning an `nn.Module` that maps float32 [B, *input_shape] to logits [B, C].
The trainer always passes `num_classes` and `input_shape` as keywords; every
`--student-arg key=value` becomes one more keyword. Two factories ship here:

    train.students:mlp   Hinton et al.'s MNIST nets (784-1200-1200-10 teacher,
                         784-800-800-10 student): Flatten, hidden ReLU layers.
    train.students:cnn   a small conv net: [conv3x3 -> ReLU -> maxpool2] per
                         entry of `channels`, then one hidden layer.
    train.students:gpt   a small causal LM for per-token sets (train/gpt.py;
                         built and checked by train/lm_students.py).
    train.students:resnet18, resnet34   ResNets for images (train/resnet.py).

Regularisation comes through student args (`dropout`, `input_dropout`) and
through `--jitter N` (random shifts of up to N pixels, `jitter_images` below),
which Hinton et al. used for their MNIST teachers.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from train.gpt import gpt  # noqa: F401  (the built-in causal-LM student, train.students:gpt)
from train.resnet import resnet18, resnet34  # noqa: F401  (conv students, train.students:resnet18)
from transferset.errors import UserError, first_line
from transferset.inputs import load_callable

TRAINER_KEYWORDS = ("num_classes", "input_shape")


def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: tuple[int, ...] | int = (800, 800),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Module:
    """Flatten [B, *input_shape] -> ReLU hidden layers -> [B, num_classes]."""
    hidden = _as_tuple(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout:
        layers.append(nn.Dropout(input_dropout))
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: tuple[int, ...] | int = (32, 64),
    kernel_size: int = 3,
    hidden: int = 128,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Module:
    """[B, C_in, H, W] (or [B, H, W]) -> conv blocks -> hidden -> [B, num_classes].

    Each block keeps H, W through a padded conv and halves them with a 2x2 max
    pool, so `len(channels)` blocks need H, W >= 2 ** len(channels).
    """
    channels = _as_tuple(channels)
    if len(input_shape) == 2:
        in_channels, height, width = 1, *input_shape
    elif len(input_shape) == 3:
        in_channels, height, width = input_shape
    else:
        raise UserError(f"train.students:cnn needs image inputs (--input-shape C,H,W or H,W), got shape {input_shape}; use train.students:mlp")
    layers: list[nn.Module] = [] if len(input_shape) == 3 else [nn.Unflatten(1, (1, height))]
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise UserError(f"train.students:cnn: {len(channels)} pooling blocks shrink input {input_shape} to nothing; pass fewer --student-arg channels=...")
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)



def _as_tuple(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


# -- `--student-arg key=value` ----------------------------------------------


def parse_student_args(items: list[str] | None) -> dict[str, Any]:
    """["hidden=800,800", "dropout=0.5"] -> {"hidden": (800, 800), "dropout": 0.5}.

    Values: true/false -> bool, none -> None, ints, floats, a comma list -> a
    tuple of those, anything else a string.
    """
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--student-arg {item!r} must look like key=value (e.g. hidden=800,800)")
        if key in TRAINER_KEYWORDS:
            raise UserError(f"--student-arg {key} is set by the trainer from the data; drop it")
        if key in parsed:
            raise UserError(f"--student-arg {key} is given twice; keep one")
        parsed[key] = tuple(_scalar(v) for v in text.split(",")) if "," in text else _scalar(text)
    return parsed


def _scalar(text: str) -> Any:
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def build_student(spec: str, student_args: dict[str, Any], num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Call the factory and check that it maps [B, *input_shape] to [B, num_classes]."""
    model = build_factory(spec, student_args, num_classes, input_shape)
    check_output_size(model, spec, num_classes, input_shape)
    return model


def build_factory(spec: str, student_args: dict[str, Any], num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Call the factory `spec` with the trainer's keywords and `student_args`; an nn.Module or one line."""
    factory = load_callable(spec, "--student")
    _check_keywords(factory, spec, student_args)
    try:
        model = factory(num_classes=num_classes, input_shape=tuple(input_shape), **student_args)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"--student {spec} rejected its arguments ({first_line(error)}); fix --student-arg") from None
    except Exception as error:  # user code: one line naming the factory, not a traceback
        raise UserError(
            f"--student {spec} failed when called ({type(error).__name__}: {first_line(error)}); "
            f"fix the factory (it is called as {spec}(num_classes={num_classes}, input_shape={tuple(input_shape)}, **student_args))"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--student {spec} returned {type(model).__name__}, not a torch.nn.Module; make the factory return the model")
    return model


def _check_keywords(factory, spec: str, student_args: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # builtins and C callables: let the call itself complain
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in TRAINER_KEYWORDS:
        if name not in params:
            raise UserError(f"--student {spec} must accept keyword argument {name!r} (the trainer passes num_classes and input_shape)")
    unknown = sorted(set(student_args) - set(params))
    if unknown:
        accepted = [p for p in params if p not in TRAINER_KEYWORDS]
        raise UserError(f"--student-arg {', '.join(unknown)}: {spec} does not take it (it takes: {', '.join(accepted) or 'nothing'})")


def check_output_size(model: nn.Module, spec: str, num_classes: int, input_shape: tuple[int, ...]) -> None:
    """One forward pass of two zero rows on the CPU, in eval mode, to read the output size."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"--student {spec} fails on inputs of shape {tuple(input_shape)} ({type(error).__name__}: {first_line(error)}); "
            f"check --input-shape and --student-arg"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"--student {spec} must return logits [batch, classes], got {shape}")
    if out.shape[1] != num_classes:
        raise UserError(
            f"--student {spec} outputs {out.shape[1]} logits per row but the data has {num_classes} classes; "
            f"make the student's output size {num_classes}"
        )


# -- input jitter -------------------------------------------------------------


def jitter_images(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-max_shift, max_shift], zero-filled.

    x: [B, C, H, W] or [B, H, W]; returns the same shape. The shifts come from
    `generator` (a CPU generator seeded per step by the caller), so a run and
    its resumed copy draw exactly the same shifts.
    """
    if max_shift <= 0:
        return x
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise UserError(f"--jitter needs image inputs [C,H,W] or [H,W]; these inputs have shape {tuple(x.shape[1:])}: drop --jitter")
    b, _, h, w = x.shape
    shifts = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).to(x.device)  # [2, B]
    padded = nn.functional.pad(x, (max_shift, max_shift, max_shift, max_shift))  # [B, C, H+2N, W+2N]
    rows = (shifts[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)  # [B, 1, H, 1]
    cols = (shifts[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)  # [B, 1, 1, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    out = padded[batch, chan, rows, cols]  # [B, C, H, W]
    return out.squeeze(1) if squeeze else out
