"""Teachers: one protocol, a loader per form, picked by name or by file type.

A teacher takes a batch of named tensors (`{"pixels": x}`; a language model's
`{"input_ids": ..., "attention_mask": ...}`) and returns logits `[B, C]` or per
token `[B, L, V]`, whatever its form. The forms are loaders registered in
`LOADERS` (`export.py`: torch.export `.pt2`; `torchscript.py`; `factory.py`:
`package.module:function` with optional `--weights`). A `--teacher` names its
form explicitly (`export:a.pt2`, `factory:pkg.mod:fn`) or is recognised by what
the file *is* (a zip with a `.pt2` archive marker, a TorchScript zip), never by
its suffix. Each loader also reports a content fingerprint of everything that
determines the outputs, without loading the model (for the resume check).

Only `transferset generate` imports this package. The trainer must not (a test
checks), so that training from a transfer set never needs a teacher.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Protocol

import torch

from transferset.errors import UserError, first_line
from transferset.registry import Registry
from transferset.teachers.outputs import in_fixed_batches, logits_of


@dataclass(frozen=True)
class TeacherSpec:
    """What the user named on the command line for one ensemble member."""

    spec: str  # [kind:]path or [factory:]package.module:function
    weights: str | None = None  # state dict for a factory teacher
    ensemble_weight: float | None = None
    output: str | None = None  # --teacher-output: the key or index of the logits in a tuple/list/dict output


@dataclass
class Teacher:
    name: str
    format: str  # the loader's kind
    sha256: str  # content fingerprint (file hash, or weights hash for a factory)
    module: torch.nn.Module
    spec: TeacherSpec
    # A program exported with a fixed batch size only runs on batches of exactly
    # that many rows: it is fed in such batches, the last one padded (outputs.py).
    fixed_batch: int | None = None
    # What a form knows beyond the common fields (an hf teacher's tokenizer fingerprint and vocabulary
    # size), merged into describe(); None for the other forms, whose provenance stays as it was.
    extra: dict | None = None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, C] or [B, L, V] for a batch of named input tensors."""
        if self.fixed_batch is not None:
            return in_fixed_batches(self._logits, inputs, self.fixed_batch)
        return self._logits(inputs)

    def _logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.module(*inputs.values()) if len(inputs) == 1 else self.module(**inputs)
        return logits_of(out, self.name, self.spec.output)

    def describe(self, weight: float) -> dict:
        described = {"name": self.name, "format": self.format, "sha256": self.sha256, "weight": weight,
                     "spec": self.spec.spec, "weights_file": self.spec.weights}
        if self.spec.output is not None:  # absent rather than null: older sets' provenance stays as it was
            described["output"] = self.spec.output
        if self.extra:
            described.update(self.extra)
        return described


class TeacherLoader(Protocol):
    kind: str

    def recognises(self, target: str) -> bool:
        """Whether `target` (a path or name, kind prefix removed) is of this form."""

    def fingerprint(self, target: str, spec: TeacherSpec) -> dict:
        """Content hashes of everything that determines the outputs, without loading."""

    def load(self, target: str, spec: TeacherSpec, trust: bool) -> Teacher:
        """The teacher on the CPU, in eval mode where the form allows."""


LOADERS: Registry[TeacherLoader] = Registry(lambda loader: loader.kind, lambda kind, known: f"unknown teacher form {kind!r}; use one of: {known}")
register, unregister = LOADERS.register, LOADERS.unregister


def resolve(spec: TeacherSpec) -> tuple[TeacherLoader, str]:
    """The loader for a --teacher and its target: by explicit `kind:` prefix, else
    by asking each loader, in registration order, whether it recognises the file."""
    kind, sep, rest = spec.spec.partition(":")
    if sep and kind in LOADERS:
        return LOADERS.get(kind), rest
    for loader in LOADERS:
        if loader.recognises(spec.spec):
            return loader, spec.spec
    from transferset.teachers.files import describe_unknown

    if sep and os.path.exists(rest):  # `form:path` with a form nobody registered
        LOADERS.get(kind)
    raise UserError(describe_unknown(spec.spec, LOADERS.names()))


def fingerprint(spec: TeacherSpec) -> dict:
    loader, target = resolve(spec)
    found = {"kind": loader.kind, **loader.fingerprint(target, spec)}
    if spec.output is not None:  # only when given: resume keys of sets made without it do not change
        found["output"] = spec.output
    return found


def load_teacher(spec: TeacherSpec, device: torch.device, trust_checkpoint: bool = False) -> Teacher:
    loader, target = resolve(spec)
    if spec.weights and loader.kind != "factory":
        raise UserError(f"--weights applies to factory teachers (package.module:function), not to the file {spec.spec!r}")
    teacher = loader.load(target, spec, trust_checkpoint)
    teacher.module = teacher.module.to(device)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        teacher.module.eval()  # exported programs may refuse eval(); they were traced in eval mode
    return teacher


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast for teachers; results are cast to float32 before combining."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype is torch.float16:
        raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_teachers(teachers: list[Teacher], inputs: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    """Member logits [K, B, C] (or [K, B, L, V]) in float32 for one batch of named inputs."""
    rows = next(iter(inputs.values())).shape[0]
    device = next(iter(inputs.values())).device
    outs = []
    with torch.inference_mode(), autocast_context(device, precision):
        for t in teachers:
            try:
                out = t(inputs)
            except torch.OutOfMemoryError:
                raise UserError(f"teacher {t.name!r} ran out of memory on a batch of {rows} rows; lower --batch-size "
                                f"(or use --precision bf16)") from None
            except (RuntimeError, ValueError, TypeError, IndexError) as error:  # the model's own failure, e.g. a guard
                shapes = ", ".join(str(tuple(v.shape)) for v in inputs.values())
                hint = ("check that the teacher is a language model of the source's tokenizer (input_ids, attention_mask)"
                        if "input_ids" in inputs else "check --input-shape/--input-scale and that the teacher takes these inputs")
                raise UserError(
                    f"teacher {t.name!r} failed on a batch of shape {shapes} ({type(error).__name__}: {first_line(error)}); {hint}"
                ) from None
            if not isinstance(out, torch.Tensor) or out.ndim not in (2, 3) or out.shape[0] != rows:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise UserError(f"teacher {t.name!r} returned {shape} for a batch of {rows}; a teacher must return logits [batch, classes]")
            outs.append(out)
    shapes = {tuple(o.shape[1:]) for o in outs}
    if len(shapes) > 1:
        detail = ", ".join(f"{t.name}={o.shape[-1]}" for t, o in zip(teachers, outs))
        raise UserError(f"teachers disagree on the number of classes ({detail}); every ensemble member must predict the same classes")
    # One float32 [K, ...] written member by member (the cast happens in the copy): for an LM's
    # [B, L, V] logits, a float32 copy per member and then a stack would move twice the bytes.
    member = torch.empty((len(outs), *outs[0].shape), dtype=torch.float32, device=outs[0].device)
    for k, out in enumerate(outs):
        member[k].copy_(out)
    return member


from transferset.teachers import export, factory, torchscript, huggingface  # noqa: E402,F401,I001  (each registers its loader, in this order)
