"""Specialist ensembles (Hinton, Vinyals & Dean 2015, section 5): the combined
distribution of generalists and specialists, solved exactly per row.

A generalist g predicts all C classes: p_g = softmax(z_g / T). A specialist m
predicts its classes S_m (in `--classes` order) and one "dustbin" for every other
class: p_m = softmax(z_m / T) over len(S_m) + 1 outputs. Collapsing a full
distribution q onto m's outputs gives (A_m q)_j = q_{S_m[j]}, and for the dustbin
Q_m = sum_{c not in S_m} q_c. The combined q minimises, per row,

    F(q) = sum_g w_g KL(p_g || q) + sum_{m active} alpha_m KL(p_m || A_m q)

over the simplex (w_g: the generalists' --teacher-weight, normalised to sum 1, so
one generalist weighs 1 as in the paper; alpha_m: a specialist's --teacher-weight,
default 1). Following the paper, specialist m is *active* on a row only when the
generalists' n most probable classes (`top`, the paper's n = 1) meet S_m; a row with
no active specialist gets the generalists' arithmetic mean exactly.

F is convex in q (minus the log of a linear function). We solve it by the EM
(majorise-minimise) fixed point, in float32 log space,

    q_c <- ( a_c + sum_{m: c in S_m} alpha_m p_m(c) + q_c sum_{m: c not in S_m} alpha_m p_m(dustbin) / Q_m ) / lam

with a_c = sum_g w_g p_g(c) and lam = sum_g w_g + sum_{m active} alpha_m. Each step
keeps q on the simplex and never increases F (it is EM for a mixture whose hidden
variable is which class inside the dustbin a specialist's mass belongs to).

The convergence bound: the gradient of F is dF/dq_c = -lam * q_new_c / q_c, so the
Frank-Wolfe duality gap at q is

    F(q) - min F  <=  lam * (max_c q_new_c / q_c - 1)

which every step computes for free. We stop when that bound is below
`tol * max(1, lam)` nats for every row (tol = 1e-5 by default): F itself scales
with lam (the total KL weight), and float32 rounding puts a floor near lam * 1e-6,
so an absolute tolerance could never be met once the weights add up to ~10 or
more (measured: 500 steps on every batch). We return q_new, whose F is lower still.

Cost per step: O(B * C) for the classes no specialist covers, plus
O(M * B * K) for the K classes some specialist covers (never M * B * C), so a
thousand classes with ten specialists of a few classes each costs about what a
softmax over the row does. Measured in benchmarks/bench_specialists.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Solution:
    log_q: torch.Tensor  # [B, C] float32, log of the combined distribution (rows sum to 1)
    iterations: int  # EM steps taken (0: no row had an active specialist)
    gap: torch.Tensor  # [B] the bound on F(q) - min F after the last step (0 for rows without specialists)


def active_specialists(log_mix: torch.Tensor, classes: list[torch.Tensor], top: int) -> torch.Tensor:
    """[M, B] bool: specialist m votes on row b when the generalists' `top` most probable
    classes (of `log_mix` [B, C]) meet its classes. The paper uses top = 1."""
    top_classes = log_mix.topk(min(top, log_mix.shape[-1]), dim=-1).indices  # (B, n)
    rows = [torch.isin(top_classes, s.to(log_mix.device)).any(dim=-1) for s in classes]
    return torch.stack(rows) if rows else torch.zeros(0, log_mix.shape[0], dtype=torch.bool, device=log_mix.device)


def solve(log_p_general: torch.Tensor, general_weights: torch.Tensor, log_p_special: list[torch.Tensor],
          classes: list[torch.Tensor], special_weights: torch.Tensor, active: torch.Tensor,
          tol: float = 1e-5, max_iter: int = 500) -> Solution:
    """The minimiser of F per row.

    log_p_general [G, B, C]: the generalists' log-probabilities; general_weights [G].
    log_p_special: M tensors [B, len(classes[m]) + 1] (its classes, then the dustbin).
    classes: M LongTensors of class indices in [0, C), no repeats within one.
    special_weights [M]; active [M, B] bool.
    """
    b = log_p_general.shape[1]
    device = log_p_general.device
    w = general_weights.to(device=device, dtype=torch.float32)
    log_a = torch.logsumexp(torch.log(w).view(-1, 1, 1) + log_p_general.float(), dim=0)  # (B, C)
    lam_general = w.sum()
    log_q = log_a - torch.log(lam_general)
    if not classes or not active.any():
        return Solution(log_q, 0, torch.zeros(b, device=device))
    rows = active.any(dim=0).nonzero().flatten()  # only rows some specialist votes on need solving
    sub = _Problem(log_a[rows], lam_general, [p[rows].float() for p in log_p_special], classes,
                   special_weights.to(device=device, dtype=torch.float32), active[:, rows])
    sub_log_q, iterations, sub_gap = sub.run(log_q[rows], tol, max_iter)
    gap = torch.zeros(b, device=device)
    log_q, gap = log_q.index_copy(0, rows, sub_log_q), gap.index_copy(0, rows, sub_gap)
    return Solution(log_q, iterations, gap)


class _Problem:
    """The constant parts of one batch's EM update, in terms of the covered classes."""

    def __init__(self, log_a, lam_general, log_p_special, classes, alpha, active):
        device = log_a.device
        b, c = log_a.shape
        m = len(classes)
        classes = [s.to(device=device, dtype=torch.long) for s in classes]
        self.covered = torch.unique(torch.cat(classes))  # (K,) sorted
        self.uncovered = torch.ones(c, dtype=torch.bool, device=device)
        self.uncovered[self.covered] = False
        k = self.covered.numel()
        position = torch.full((c,), -1, dtype=torch.long, device=device)
        position[self.covered] = torch.arange(k, device=device)
        self.in_s = torch.zeros(m, k, dtype=torch.bool, device=device)  # covered class k belongs to specialist m
        own = torch.full((m, b, k), NEG_INF, device=device)  # log alpha_m p_m(c) for c in S_m, rows where m votes
        log_alpha = torch.log(alpha)
        gate = torch.where(active, 0.0, NEG_INF)  # (M, B): log of the 0/1 vote
        self.log_dustbin = torch.empty(m, b, device=device)
        for i, (s, log_p) in enumerate(zip(classes, log_p_special)):
            self.in_s[i, position[s]] = True
            own[i][:, position[s]] = log_alpha[i] + log_p[:, :-1] + gate[i, :, None]
            self.log_dustbin[i] = log_alpha[i] + log_p[:, -1] + gate[i]
        # The part of the numerator that does not depend on q: a_c plus the specialists' own classes.
        self.log_base = log_a.clone()
        self.log_base[:, self.covered] = torch.logaddexp(log_a[:, self.covered], torch.logsumexp(own, dim=0))
        self.log_lam = torch.log(lam_general + (alpha[:, None] * active).sum(dim=0))  # (B,)

    def step(self, log_q: torch.Tensor) -> torch.Tensor:
        """One EM update: log q_new [B, C] (rows sum to 1 up to rounding)."""
        q_cov = log_q[:, self.covered]  # (B, K)
        q_uncovered = torch.logsumexp(log_q.masked_fill(~self.uncovered, NEG_INF), dim=-1)  # (B,)
        outside = q_cov.unsqueeze(0).masked_fill(self.in_s.unsqueeze(1), NEG_INF)  # (M, B, K)
        log_dustbin_q = torch.logaddexp(q_uncovered, torch.logsumexp(outside, dim=-1))  # (M, B): log Q_m
        ratio = self.log_dustbin - log_dustbin_q  # (M, B): log alpha_m p_m(dustbin) / Q_m (-inf: not voting)
        # sum over the specialists whose dustbin holds the class: all of them for an uncovered class.
        ratio_uncovered = torch.logsumexp(ratio, dim=0)  # (B,)
        ratio_cov = torch.logsumexp(ratio.unsqueeze(-1).masked_fill(self.in_s.unsqueeze(1), NEG_INF), dim=0)  # (B, K)
        log_ratio = ratio_uncovered.unsqueeze(-1).expand_as(log_q).clone()
        log_ratio[:, self.covered] = ratio_cov
        return torch.logaddexp(self.log_base, log_q + log_ratio) - self.log_lam.unsqueeze(-1)

    def run(self, log_q: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        gap = torch.full((log_q.shape[0],), float("inf"), device=log_q.device)
        for iteration in range(1, max_iter + 1):
            new = self.step(log_q)
            # Frank-Wolfe gap: lam * (max_c q_new/q - 1), an upper bound on F(q) - min F.
            gap = torch.exp(self.log_lam) * torch.expm1((new - log_q).max(dim=-1).values).clamp_min(0.0)
            log_q = new - torch.logsumexp(new, dim=-1, keepdim=True)  # remove rounding drift off the simplex
            if bool((gap <= tol * torch.exp(self.log_lam).clamp_min(1.0)).all()):  # relative to the KL weight
                break
        return log_q, iteration, gap


@dataclass(frozen=True)
class Specialists:
    """The specialists' outputs on one batch, and what each covers."""

    logits: list[torch.Tensor]  # M tensors [B, len(classes[m]) + 1]: its classes, then the dustbin
    classes: list[torch.Tensor]  # M LongTensors of class indices
    weights: torch.Tensor  # [M] the KL weights alpha_m
    top: int  # the generalists' top-n classes that activate a specialist


def combine_specialists(general_logits: torch.Tensor, general_weights: torch.Tensor, specialists: Specialists,
                        temperature: float) -> torch.Tensor:
    """Target logits [B, C] from generalists' logits [G, B, C]: T * log q, shifted to max 0
    (so softmax(s / T) == q at the stored T; T is baked in, as for arithmetic)."""
    log_p_general = torch.log_softmax(_shifted(general_logits) / temperature, dim=-1)  # (G, B, C)
    log_p_special = [torch.log_softmax(_shifted(z) / temperature, dim=-1) for z in specialists.logits]
    w = general_weights.to(device=log_p_general.device, dtype=torch.float32)
    log_mix = torch.logsumexp(torch.log(w).view(-1, 1, 1) + log_p_general, dim=0)  # (B, C), for the top-n vote
    active = active_specialists(log_mix, specialists.classes, specialists.top)
    target = temperature * solve(log_p_general, w, log_p_special, specialists.classes, specialists.weights, active).log_q
    return target - target.max(dim=-1, keepdim=True).values


def _shifted(z: torch.Tensor) -> torch.Tensor:
    """float32, each row shifted to max 0 first (as combine.py does: keeps large logits' differences exact)."""
    z = z.to(torch.float32)
    return z - z.max(dim=-1, keepdim=True).values
