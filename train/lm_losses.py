"""Per-token losses for causal-LM students, all in float32 log space.

Shapes: B rows, L positions, V vocabulary, S support slots.
    logits          float32 [B, L, V] the student's logits (cast up if autocast made them bf16)
    tokens          int64 [B, 3, L]   input_ids, attention_mask, target_mask (Batch.inputs of a per-token set)
    targets         the codec's decoded per-token targets:
                    dense   {"target_logits": [B, L, V]}
                    support {"support_ids", "support_weights", "support_logprobs": [B, L, S], "tail_logmass": [B, L]}

Masks: only positions with target_mask = 1 count (position t holds the teachers'
distribution of token t + 1). Every term is the mean over the target positions
of the whole batch, not a mean of per-row means, so a row with 3 targets weighs 3
positions, like a row with 30 weighs 30. A batch without target positions has
loss 0 (graph kept). Padding and prompt positions never reach a log-softmax.

Memory: the student's [B, L, V] logits and one gradient buffer of their size are the
only full-size tensors. The target positions are taken CHUNK_VALUES / V at a time: each
chunk gathers its [n, V] rows, computes the soft and hard terms and their gradient (a
small graph of its own), writes that gradient into the buffer, and frees its
temporaries (gather, log-softmax or log-sum-exp, a support's -inf scatter for the
exact tail) before the next chunk (`_ChunkedTokenLoss`). The values equal the
unchunked formulas up to float summation order.

Soft terms at temperature T, scaled by T^2 (Hinton et al.; see train/losses.py):
    kd          forward KL(p_T || q_T): dense over V; top-k over the K ids plus one
                tail bucket (exact KL between the two distributions coarsened to
                K + 1 buckets); sampled: sum (count / N) (log p - log q), unbiased.
    reverse-kl  KL(q_T || p_T), dense or top-k (coarsened, exact); log p floored at
                LOG_P_FLOOR so that a stored probability of 0 costs a finite amount.
    jsd         Jensen-Shannon divergence 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2,
                dense or top-k (coarsened, exact).
Sampled targets feed `kd` only: reverse KL and JSD need p at the student's own
draws, which a sample of the teachers does not hold.

Hard term (1 - alpha): next-token cross-entropy at T = 1 on the target positions,
label at t = input_ids[t + 1].
"""

from __future__ import annotations

import math
from typing import Callable

import torch

LOG_P_FLOOR = -100.0  # log p below this (p = 0, e.g. a float16 underflow) counts as this in reverse KL / JSD
CHUNK_VALUES = 1 << 24  # student logits per chunk of target positions: 64 MB of float32 temporaries


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _at_t(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """x / T, without a copy of [N, V] at T = 1."""
    return x if temperature == 1 else x / temperature


def target_positions(tokens: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: positions with a target whose next token is in the row (never the last)."""
    mask = tokens[:, 2] != 0
    mask[:, -1] = False  # position L-1 predicts a token beyond the row
    return mask


def next_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """int64 [B, L]: input_ids shifted left by one (the label of position t); 0 at L-1."""
    ids = tokens[:, 0]
    return torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)


# -- per-position divergences on [N, V] or bucketed [N, S+1] log-probabilities ----------


def _forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N]: sum p (log p - log q), with p log p = 0 where p = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(log_q)).sum(-1)


def _reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N]: sum q (log q - max(log p, floor)), with q log q = 0 where q = 0."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p.clamp(min=LOG_P_FLOOR)), torch.zeros_like(log_q)).sum(-1)


def _jsd(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N]: 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2 as a log-add-exp."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * _forward_kl(log_p, log_m) + 0.5 * _forward_kl(log_q, log_m)


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "kd": _forward_kl, "reverse-kl": _reverse_kl, "jsd": _jsd}

# Which per-token target kinds feed which --loss (sampled: kd only, see the docstring).
LM_LOSSES: dict[str, tuple[str, ...]] = {"dense": ("kd", "reverse-kl", "jsd"), "topk": ("kd", "reverse-kl", "jsd"), "sampled": ("kd",)}


def _support_log_q(s: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log q at the support ids [N, S] and of every other id together [N]
    (a log-sum-exp over the ids outside the support; -inf when the support is all of V)."""
    log_z = torch.logsumexp(s, dim=-1, keepdim=True)  # [N, 1]
    log_q = torch.gather(s, -1, ids) - log_z  # [N, S]
    log_q_tail = torch.logsumexp(s.scatter(-1, ids, float("-inf")), dim=-1) - log_z.squeeze(-1)  # [N]
    return log_q, log_q_tail


def position_divergence(s: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float, kind: str) -> torch.Tensor:
    """[N]: the divergence `kind` at each target position. s: student logits [N, V];
    targets: the decoded targets gathered at the same N positions."""
    s = _at_t(_f32(s), temperature)
    if "target_logits" in targets:
        log_p = torch.log_softmax(_at_t(_f32(targets["target_logits"]).to(s.dtype), temperature), dim=-1)
        return DIVERGENCES[kind](log_p, torch.log_softmax(s, dim=-1))
    ids = targets["support_ids"].long()
    weights, lp = targets["support_weights"].to(s.dtype), targets["support_logprobs"].to(s.dtype)
    tail = targets["tail_logmass"].to(s.dtype)  # -inf: no tail bucket (sampled, or K = V)
    log_q, log_q_tail = _support_log_q(s, ids)
    if kind == "kd":  # weights: p (top-k) or count / N (sampled): the unbiased form for samples
        support = torch.where(weights > 0, weights * (lp - log_q), torch.zeros_like(log_q)).sum(-1)
        tail_term = torch.where(torch.isfinite(tail), tail.exp() * (tail - log_q_tail), torch.zeros_like(tail))
        return support + tail_term
    # top-k: the two distributions coarsened to K ids + one tail bucket, exactly
    return DIVERGENCES[kind](torch.cat([lp, tail[:, None]], -1), torch.cat([log_q, log_q_tail[:, None]], -1))


def token_soft_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor], tokens: torch.Tensor, temperature: float,
                    kind: str = "kd") -> torch.Tensor:
    """T^2 * mean over the batch's target positions of `kind`; a scalar (0 without targets)."""
    return _token_loss(logits, targets, tokens, temperature, kind, soft_weight=1.0, hard_weight=0.0)[0]


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (T = 1) of input_ids[t + 1] at the target positions t; a scalar."""
    return _token_loss(logits, None, tokens, 1.0, "kd", soft_weight=0.0, hard_weight=1.0)[0]


def lm_distillation_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor] | None, tokens: torch.Tensor, *, alpha: float,
                         temperature: float, kind: str = "kd") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * soft + (1 - alpha) * hard, as train.losses.distillation_loss but per token;
    a term of weight 0 is not computed. Without targets: the hard term alone."""
    if targets is None:
        loss, _, hard = _token_loss(logits, None, tokens, 1.0, kind, soft_weight=0.0, hard_weight=1.0)
        return loss, {"soft": torch.zeros_like(hard), "hard": hard}
    loss, soft, hard = _token_loss(logits, targets, tokens, temperature, kind, soft_weight=alpha, hard_weight=1.0 - alpha)
    return loss, {"soft": soft, "hard": hard}


def _token_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor] | None, tokens: torch.Tensor, temperature: float,
                kind: str, *, soft_weight: float, hard_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(soft_weight * soft + hard_weight * hard, soft, hard): soft = T^2 * mean divergence,
    hard = mean next-token CE over the target positions; the last two detached. A term
    of weight 0 is not computed (reported as 0)."""
    mask = target_positions(tokens)  # [B, L]
    if not bool(mask.any()):
        zero = _f32(logits).sum() * 0.0
        return zero, zero.detach(), zero.detach()
    names = list(targets or {})
    n = mask.sum().to(torch.float32)
    scale = torch.stack([n.new_tensor(temperature**2), n.new_tensor(1.0)]) / n  # sums -> (soft, hard) means
    weights = torch.tensor([soft_weight, hard_weight], dtype=torch.float32, device=logits.device) * scale

    def terms(rows: torch.Tensor, labels: torch.Tensor, *picked: torch.Tensor) -> torch.Tensor:
        """float32 [2]: the chunk's sums of the divergence and of the CE over its positions."""
        zero = rows.new_zeros((), dtype=torch.float32)
        soft = position_divergence(rows, dict(zip(names, picked)), temperature, kind).sum() if soft_weight else zero
        hard = torch.nn.functional.cross_entropy(_f32(rows), labels, reduction="sum") if hard_weight else zero
        return torch.stack([soft, hard])

    flat = logits.reshape(mask.numel(), logits.shape[-1])  # [B * L, V], a view
    extras = [next_tokens(tokens).reshape(-1)] + [value.reshape(mask.numel(), *value.shape[2:]) for value in (targets or {}).values()]
    index = mask.reshape(-1).nonzero().squeeze(-1)  # [N]
    step = max(1, CHUNK_VALUES // flat.shape[-1])
    if torch.is_grad_enabled() and flat.requires_grad:  # grad mode is off inside a Function's forward: read it here
        total, sums = _ChunkedTokenLoss.apply(flat, index, terms, weights, step, *extras)
    else:
        sums = _chunk_sums(flat, index, terms, weights, step, extras, grad=None)
        total = (sums * weights).sum()
    soft, hard = (sums * scale).unbind()
    return total, soft, hard


def _chunk_sums(flat: torch.Tensor, index: torch.Tensor, terms: Callable[..., torch.Tensor], weights: torch.Tensor, step: int,
                extras: list[torch.Tensor], grad: torch.Tensor | None) -> torch.Tensor:
    """float32 [2]: the (soft, hard) sums over the positions `index`, CHUNK_VALUES logits at a
    time; with `grad` (float32 [B * L, V]), each chunk's gradient of weights . terms is
    written into it at the chunk's rows. The chunk is taken in float32 before it becomes a
    leaf, so an fp16 student's small gradients do not underflow before the loss scale of
    the backward reaches them."""
    sums = torch.zeros(2, dtype=torch.float32, device=flat.device)
    for start in range(0, index.numel(), step):
        part = index[start:start + step]
        rows = flat.index_select(0, part).float()  # [n, V]
        picked = [value.index_select(0, part) for value in extras]
        if grad is not None:
            with torch.enable_grad():
                rows.requires_grad_()
                chunk = terms(rows, *picked)
                (rows_grad,) = torch.autograd.grad((chunk * weights).sum(), rows)
            grad.index_copy_(0, part, rows_grad)  # positions are distinct: a copy, not an add
        else:
            chunk = terms(rows, *picked)
        sums += chunk.detach()
    return sums


class _ChunkedTokenLoss(torch.autograd.Function):
    """sum over chunks of target positions of weights . terms(rows [n, V], *extras[n]), with
    its gradient with respect to the logits computed chunk by chunk in the forward, each
    chunk a leaf of its own small graph (autograd.grad), written into one float32
    [B * L, V] buffer. So the [n, V] temporaries live one chunk at a time, and no step
    builds a full-size tensor per chunk (as autograd through `flat[index]` would: each
    chunk's backward scatters into a zero tensor of the whole logits). One backward per
    forward: the buffer is scaled in place (no second full-size copy)."""

    @staticmethod
    def forward(ctx, flat, index, terms, weights, step, *extras):
        grad = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        sums = _chunk_sums(flat, index, terms, weights, step, list(extras), grad)
        ctx.save_for_backward(grad)
        ctx.dtype, ctx.used = flat.dtype, False
        ctx.mark_non_differentiable(sums)
        return (sums * weights).sum(), sums

    @staticmethod
    def backward(ctx, grad_total, grad_sums):
        if ctx.used:
            raise RuntimeError("the chunked per-token loss takes one backward per forward (its gradient buffer is scaled in place); "
                               "compute the loss again for another backward")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        # Scale first (an fp16 run's loss scale), then cast to the logits' dtype.
        return (grad.mul_(grad_total).to(ctx.dtype), None, None, None, None) + (None,) * (len(ctx.needs_input_grad) - 5)
