"""Causal-LM students for per-token transfer sets: building one and checking it.

A per-token student maps (input_ids [B, L] int64, attention_mask [B, L] int64) to
logits [B, L, V], V the set's vocabulary. Two ways to name one:

    --student train.students:gpt         any factory f(num_classes=V, input_shape=(L,), **student_args)
    --student hf:DIR                     a Hugging Face causal LM built from DIR/config.json with random
                                         weights (AutoModelForCausalLM.from_config, local files only)

The trainer never imports transferset.teachers, so the Hugging Face wrapper here is
its own (a few lines: call the model, return `.logits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferset.errors import UserError, first_line

HF_PREFIX = "hf:"


class CausalLMLogits(nn.Module):
    """A transformers causal LM as (input_ids, attention_mask) -> logits [B, L, V]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def hf_student(directory: str) -> nn.Module:
    """A randomly initialised causal LM from DIR/config.json (seeded by the caller)."""
    folder = Path(directory)
    if not (folder / "config.json").is_file():
        raise UserError(f"--student hf:{directory}: {folder / 'config.json'} not found; point at a directory with a "
                        f"Hugging Face config.json (the student is built from it with random weights)")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise UserError("--student hf:DIR needs the transformers package; pip install transformers") from None
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_config(config)
    except Exception as error:  # an unknown model_type, a malformed config: one line
        raise UserError(f"--student hf:{directory}: no causal LM can be built from its config.json "
                        f"({type(error).__name__}: {first_line(error)}); use a causal LM config (e.g. GPT-2, Llama)") from None
    return CausalLMLogits(model)


def build_lm_student(spec: str, student_args: dict[str, Any], vocab: int, length: int) -> nn.Module:
    """Build the student and check that it maps two token rows to [2, L, vocab]."""
    if spec.startswith(HF_PREFIX):
        if student_args:
            raise UserError(f"--student-arg {', '.join(student_args)}: an hf: student takes its settings from config.json; drop them")
        model = hf_student(spec[len(HF_PREFIX):])
    else:
        from train.students import build_factory

        model = build_factory(spec, student_args, vocab, (length,))
    check_lm_output(model, spec, vocab, length)
    return model


def check_lm_output(model: nn.Module, spec: str, vocab: int, length: int) -> None:
    """One forward pass of two rows of token 0 in eval mode on the CPU."""
    ids = torch.zeros(2, length, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(ids, torch.ones_like(ids))
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"--student {spec} is not a causal language model for this per-token set ({type(error).__name__}: {first_line(error)}); "
            f"a per-token student maps (input_ids, attention_mask) [B, {length}] to logits [B, {length}, {vocab}]: "
            f"use train.students:gpt or hf:DIR"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != (2, length):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"--student {spec} returns {shape} for token rows [2, {length}], not logits [2, {length}, {vocab}]; "
                        f"use a causal LM student (train.students:gpt or hf:DIR)")
    if out.shape[2] != vocab:
        raise UserError(f"--student {spec} outputs {out.shape[2]} logits per position but the transfer set's vocabulary has {vocab} "
                        f"tokens; make the student's vocabulary {vocab} (--student-arg, or vocab_size in its config.json)")
