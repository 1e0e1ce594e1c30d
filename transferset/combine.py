"""Combine an ensemble's logits into one soft target, in float32 log space.

Teachers may run in bf16/fp16; their logits are cast to float32 before any of
this, and nothing is ever exponentiated outside a log-sum-exp, so logits of
+-1e4 neither overflow nor turn into NaN.

Both methods return *target logits* `s` of shape [B, C] with the property

    softmax(s / T) == the combined distribution at temperature T

and every row shifted so that max(s) == 0 (the shift changes nothing after the
softmax, and keeps float16 storage away from its overflow at 65504).

* arithmetic: p = sum_k w_k softmax(z_k / T)
      log p = logsumexp_k(log w_k + log_softmax(z_k / T)),  s = T * log p
  T is baked in: softmax(s / T') for T' != T is *not* the arithmetic mean at T'.
* geometric: p ~ prod_k softmax(z_k / T) ** w_k, renormalised
      = softmax(sum_k w_k z_k / T)   (the per-member normalisers cancel)
  so s = sum_k w_k z_k, valid at every temperature.
* specialists: generalists plus specialists over subsets of the classes (Hinton et
  al. 2015, section 5), s = T * log q with q the minimiser of a sum of KLs, solved
  per row in specialists.py. T is baked in, as for arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from transferset.errors import UserError

if TYPE_CHECKING:
    from transferset.specialists import Specialists


def normalised_weights(weights: list[float] | None, num_teachers: int) -> torch.Tensor:
    """Ensemble weights as float32 summing to 1 (equal when not given)."""
    if weights is None:
        return torch.full((num_teachers,), 1.0 / num_teachers, dtype=torch.float32)
    w = torch.tensor(weights, dtype=torch.float64)
    if w.numel() != num_teachers or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UserError(f"teacher weights {weights} must be {num_teachers} non-negative numbers with a positive sum; fix --teacher-weight")
    return (w / w.sum()).to(torch.float32)


def combine(member_logits: torch.Tensor, method: str, temperature: float, weights: torch.Tensor,
            specialists: "Specialists | None" = None) -> torch.Tensor:
    """Target logits [B, C] from member logits [K, B, C] (any float dtype); per token,
    [B, L, V] from [K, B, L, V].

    `weights` is [K], float32, summing to 1. `specialists`: their outputs on the same
    rows, for method "specialists" only. Returns float32.
    """
    if method == "specialists":
        from transferset.specialists import combine_specialists

        if specialists is None:
            raise UserError("--combine specialists needs at least one --specialist FILE --classes LIST")
        return combine_specialists(member_logits, weights, specialists, temperature)
    if method not in ("arithmetic", "geometric"):
        raise UserError(f"unknown combine method {method!r}; use --combine arithmetic or --combine geometric (or specialists, with --specialist)")
    # Rows (or positions, per token) are independent: combine them a chunk at a time, so
    # a 150k vocabulary at thousands of positions needs one float32 copy of the result,
    # not several of the members' logits (each row's arithmetic is the same either way).
    k, vocab = member_logits.shape[0], member_logits.shape[-1]
    flat = member_logits.reshape(k, -1, vocab)
    out = torch.empty(flat.shape[1:], dtype=torch.float32, device=flat.device)
    step = max(1, chunk_values(flat.device) // (k * vocab))
    for start in range(0, flat.shape[1], step):
        out[start:start + step] = _combine_rows(flat[:, start:start + step], method, temperature, weights)
    return out.reshape(member_logits.shape[1:])


CHUNK_VALUES = 1 << 24  # member logits combined at once on the CPU (64 MB of float32)
CUDA_CHUNK_VALUES = 1 << 27  # on a GPU (512 MB): fewer, larger kernels; a GPU's memory holds the members anyway


def chunk_values(device: torch.device) -> int:
    """How many values to work on at once: bounded temporaries, sized for the device."""
    return CUDA_CHUNK_VALUES if device.type == "cuda" else CHUNK_VALUES


def _combine_rows(member_logits: torch.Tensor, method: str, temperature: float, weights: torch.Tensor) -> torch.Tensor:
    """[K, N, C] -> [N, C] target logits, each row shifted to max 0."""
    z = member_logits.to(torch.float32)
    # Shift each member's row to max 0 before anything else: softmax does not see the
    # shift, and differences of large logits (4467 vs 4466) stay exact in float32,
    # where dividing the raw values by T first would round them (found by Hypothesis).
    z = z - z.max(dim=-1, keepdim=True).values
    w = weights.to(device=z.device, dtype=torch.float32).view(-1, 1, 1)  # (K, 1, 1)
    if method == "arithmetic":
        log_p_members = torch.log_softmax(z / temperature, dim=-1)  # (K, N, C)
        target = temperature * torch.logsumexp(torch.log(w) + log_p_members, dim=0)  # (N, C)
    else:
        target = (w * z).sum(dim=0)  # (N, C)
    return target - target.max(dim=-1, keepdim=True).values


def soft_targets(target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The distribution a transfer set stores: softmax(target_logits / T), in float32."""
    return torch.softmax(target_logits.to(torch.float32) / temperature, dim=-1)
