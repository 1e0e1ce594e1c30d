"""Student losses, one function each, all computed in float32.

Shapes: B rows, C classes.
    student_logits  float32 [B, C] (cast up here if autocast made them bf16/fp16;
                    float64 stays float64, which the gradient tests use)
    target_logits   float32 [B, C] stored soft targets: softmax(t / T) is the
                    teachers' combined distribution at temperature T
    labels          int64 [B], -1 where the row has no hard label

Normalisation (why each term is averaged the way it is): the soft term is the
mean over *all* rows, the hard term the mean over *labelled* rows only. So a
batch that happens to hold 10% labelled rows has a hard term of the same scale
as one with 90%, and `alpha` keeps meaning the same thing batch to batch. Rows
without a label contribute only to the soft term; a batch with no labelled row
has hard term 0 (not NaN).

The `T^2` factor (Hinton et al. 2015): d KL(p_T || q_T) / d s = (q_T - p_T) / T
per row, so the soft gradients shrink as 1/T; multiplying by T^2 gives
T * (q_T - p_T) / B, whose magnitude stays about constant across temperatures
(for large T, T * (q_T - p_T) ~ (s - t) / C), so the soft and hard terms keep
their relative weight when T changes.
"""

from __future__ import annotations

from typing import Callable

import torch

from transferset.errors import UserError



def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def soft_kl_loss(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean_rows KL(p_T || q_T); a scalar.

    p_T = softmax(target_logits / T), q_T = softmax(student_logits / T), both
    taken as log_softmax in float32. KL = sum_c p (log p - log q) with the
    convention p log p = 0 where p = 0 (a stored target logit of -inf, e.g. a
    float16 underflow of an arithmetic mean, is a class of probability 0).
    """
    s = _at_least_f32(student_logits)
    t = _at_least_f32(target_logits)
    log_q = torch.log_softmax(s / temperature, dim=-1)  # [B, C]
    log_p = torch.log_softmax(t / temperature, dim=-1)  # [B, C], no grad needed
    p = log_p.exp()
    # where(p > 0, ...) and not p * (...): 0 * (-inf - log_q) would be NaN.
    per_class = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(log_q))
    kl_per_row = per_class.sum(dim=-1)  # [B]
    return temperature**2 * kl_per_row.mean()


def sparse_kl_loss(student_logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """T^2 * mean_rows of KL against a support (top-k or sampled targets); a scalar.

    Per row, with S the stored ids, w their weights, lp the teacher's log p(id) at T,
    log q the student's full log-softmax at T (never renormalised on S):

        sum_S w (lp - log q)  +  p_tail (log p_tail - log q_tail)

    top-k: w = p(id), and the tail bucket holds every other id for both sides
    (q_tail = 1 - q(S), as a log-sum-exp over the ids outside S): the exact KL
    between the two distributions coarsened to S + one bucket.
    sampled: w = count / N, no tail (log p_tail = -inf): E[w] = p, so both the value
    and the gradient are unbiased estimates of the full KL's.
    Slots of weight 0 (unused sample slots) contribute nothing.
    """
    s = _at_least_f32(student_logits) / temperature  # [B, V]
    ids = targets["support_ids"].long()  # [B, S]
    weights, lp = targets["support_weights"].to(s.dtype), targets["support_logprobs"].to(s.dtype)
    log_z = torch.logsumexp(s, dim=-1, keepdim=True)  # [B, 1]
    log_q = torch.gather(s, -1, ids) - log_z  # [B, S]
    support = torch.where(weights > 0, weights * (lp - log_q), torch.zeros_like(log_q)).sum(dim=-1)
    tail = targets["tail_logmass"].to(s.dtype)  # [B], -inf: no tail bucket
    log_q_tail = torch.logsumexp(s.scatter(-1, ids, float("-inf")), dim=-1) - log_z.squeeze(-1)
    has_tail = torch.isfinite(tail)
    tail_term = torch.where(has_tail, tail.exp() * (tail - log_q_tail), torch.zeros_like(tail))
    return temperature**2 * (support + tail_term).mean()


def kd_loss(student_logits: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The KL at T against whatever form the targets' codec decoded: dense logits or a support."""
    if "target_logits" in targets:
        return soft_kl_loss(student_logits, targets["target_logits"], temperature)
    return sparse_kl_loss(student_logits, targets, temperature)


def hard_ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at T = 1, mean over rows with label >= 0; a scalar (0 when none)."""
    labelled = labels >= 0  # [B]
    if not bool(labelled.any()):
        # Keep the graph connected (and the dtype/device right) with an exact 0.
        return _at_least_f32(student_logits).sum() * 0.0
    s = _at_least_f32(student_logits)[labelled]  # [L, C]
    return torch.nn.functional.cross_entropy(s, labels[labelled], reduction="mean")


def logit_mse_loss(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching (Caruana / Ba & Caruana 2014): mean over rows and classes of
    (centre(s) - centre(t))^2, where centre subtracts the row mean; a scalar.

    Stored targets are shifted per row (max == 0) and a softmax does not see a
    per-row shift, so both sides are centred: the loss then compares only what
    the distribution depends on. Valid only for geometric targets, whose stored
    logits are the weighted mean of the teachers' logits; an arithmetic target
    is T * log(mean of probabilities), which no teacher ever produced as logits.
    """
    s = _at_least_f32(student_logits)
    t = _at_least_f32(target_logits)
    s = s - s.mean(dim=-1, keepdim=True)  # [B, C]
    t = t - t.mean(dim=-1, keepdim=True)  # [B, C]
    return (s - t).pow(2).mean()


# Soft losses by name (`--loss`): (student logits [B, C], the target codec's decoded
# targets {name: [B, ...]}, T) -> scalar. A target kind names the losses it can feed
# (codec.losses); `register_loss` adds one (docs/architecture.md, "a new loss").
SoftLoss = Callable[[torch.Tensor, dict, float], torch.Tensor]
SOFT_LOSSES: dict[str, SoftLoss] = {
    "kd": kd_loss,
    "mse": lambda s, targets, temperature: logit_mse_loss(s, targets["target_logits"]),
}


def register_loss(name: str, loss: SoftLoss, kinds: tuple[str, ...] = ("dense",)) -> None:
    """Add a soft loss, fed by the target kinds `kinds` (their codecs then list it)."""
    from transferset.format.codecs import get_codec

    SOFT_LOSSES[name] = loss
    for kind in kinds:
        codec = get_codec(kind)
        codec.losses = tuple(dict.fromkeys([*codec.losses, name]))


def unregister_loss(name: str) -> None:
    from transferset.format.codecs import get_codec, kinds

    SOFT_LOSSES.pop(name, None)
    for kind in kinds():
        codec = get_codec(kind)
        codec.losses = tuple(n for n in codec.losses if n != name)


def distillation_loss(
    student_logits: torch.Tensor,
    targets: dict[str, torch.Tensor] | torch.Tensor | None,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    kind: str = "kd",
    term_weights: tuple = (1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * soft + (1 - alpha) * hard; returns (loss, {"soft": .., "hard": ..}).

    `term_weights` (w_soft, w_hard) multiply the two terms in the loss (not in the
    parts): a DDP rank's share of the global batch's means (train/distributed.py).

    The parts are detached scalar tensors (no host sync per step on a GPU).

    soft = SOFT_LOSSES[kind] (kd: soft_kl_loss, mse: logit_mse_loss) on `targets`
    (the codec's decoded dict; a bare tensor means dense target logits);
    hard = hard_ce_loss. Without targets (plain labelled data) the loss is
    the hard term alone, whatever alpha is. A term whose weight is 0 is not
    computed at all (so alpha = 1 never needs a label, alpha = 0 never a target).
    """
    w_soft, w_hard = term_weights
    if targets is None:
        hard = hard_ce_loss(student_logits, labels)
        return hard * w_hard, {"soft": torch.zeros_like(hard.detach()), "hard": hard.detach()}
    if kind not in SOFT_LOSSES:
        raise UserError(f"unknown --loss {kind!r}; use one of {', '.join(SOFT_LOSSES)}")
    if isinstance(targets, torch.Tensor):
        targets = {"target_logits": targets}
    zero = _at_least_f32(student_logits).sum() * 0.0
    soft = SOFT_LOSSES[kind](student_logits, targets, temperature) if alpha > 0 else zero
    hard = hard_ce_loss(student_logits, labels) if alpha < 1 else zero
    loss = alpha * soft * w_soft + (1.0 - alpha) * hard * w_hard
    return loss, {"soft": soft.detach(), "hard": hard.detach()}
