"""Sparse forms of the *combined* distribution: top-k with an exact tail, and samples.

Both take the ensemble's combined target logits (combine.py: softmax(t / T) is the
combined distribution at T), so a sparse target is always of the combined
distribution, never per member: no function here sees a member's logits.

top-k        the K most probable ids and their log-probabilities at T, plus the
             exact tail log-mass log(1 - sum of the top K), computed as a
             log-sum-exp over the other ids in float32: `1 - sum` in low
             precision loses the tail exactly where it matters (a confident
             teacher's tail of 1e-6 is below float16's resolution near 1).
sampled      N ids drawn with replacement from the distribution (inverse CDF on a
             float64 cumulative sum), merged into unique ids with counts. With the
             teacher's distribution as the proposal, count / N is an unbiased
             estimate of each id's probability, so the sampled forward KL has the
             full KL's expected value and gradient (Sparse Logit Sampling,
             Anshumann et al., ACL 2025). The draws are seeded from the targets
             themselves and a set seed, so a resumed run redraws exactly the same.

Everything works on any leading shape [..., V] (rows, or rows x positions), in
float32 log space, on the targets' device.
"""

from __future__ import annotations

import hashlib

import torch


def log_probs(target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(t / T) in float32, [..., V]."""
    return torch.log_softmax(target_logits.to(torch.float32) / temperature, dim=-1)


CHUNK_VALUES = 1 << 24  # targets sparsified at once: 64 MB of float32 temporaries, whatever the vocabulary


def _chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows per chunk: CHUNK_VALUES values on the CPU, combine.py's GPU budget on CUDA."""
    from transferset.combine import CUDA_CHUNK_VALUES

    return max(1, (CUDA_CHUNK_VALUES if device.type == "cuda" else CHUNK_VALUES) // vocab)


def _chunks(rows: int, vocab: int, device: torch.device) -> range:
    return range(0, rows, _chunk_rows(vocab, device))


def topk_with_tail(target_logits: torch.Tensor, temperature: float, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids int64 [..., k] in descending probability, log-probs float32 [..., k], tail log-mass float32 [...]).

    The tail is -inf when k equals the vocabulary (nothing left over). Rows are
    independent, so they are done a chunk at a time (bounded temporaries)."""
    shape, vocab = target_logits.shape[:-1], target_logits.shape[-1]
    flat = target_logits.reshape(-1, vocab)
    parts = []
    step = _chunk_rows(vocab, flat.device)
    for start in _chunks(flat.shape[0], vocab, flat.device):
        lp = log_probs(flat[start:start + step], temperature)
        top_lp, ids = lp.topk(k, dim=-1, largest=True, sorted=True)
        rest = lp.scatter(-1, ids, float("-inf"))  # the top k removed: what is left is the tail
        parts.append((ids, top_lp, torch.logsumexp(rest, dim=-1)))
    ids, top_lp, tail = (torch.cat(p) for p in zip(*parts))
    return ids.reshape(*shape, k), top_lp.reshape(*shape, k), tail.reshape(shape)


def batch_seed(target_logits: torch.Tensor, seed: int) -> int:
    """A seed for one batch's draws: a hash of the set's seed and (a slice of) the
    batch's own targets. The targets are a pure function of the configuration, so a
    rerun draws the same ids; a slice keeps the hash cheap at any vocabulary."""
    sample = target_logits[..., :64].to(torch.float32).contiguous().cpu().numpy().tobytes()
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + sample).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def sample_counts(target_logits: torch.Tensor, temperature: float, n: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids int64 [..., n], counts int64 [..., n], log-probs float32 [..., n]).

    n draws per row, merged: the first slots hold the distinct ids drawn, most
    frequent first (ties: smaller id first); the remaining slots repeat the first id
    with count 0, so every row has n slots and counts that sum to n."""
    shape, vocab = target_logits.shape[:-1], target_logits.shape[-1]
    flat_logits = target_logits.reshape(-1, vocab)
    generator = torch.Generator(device="cpu").manual_seed(batch_seed(target_logits, seed))
    u_all = torch.rand((flat_logits.shape[0], n), generator=generator, dtype=torch.float64).to(target_logits.device)
    parts = []
    step = _chunk_rows(vocab, flat_logits.device)
    for start in _chunks(flat_logits.shape[0], vocab, flat_logits.device):
        stop = start + step
        flat = log_probs(flat_logits[start:stop], temperature)
        cdf = flat.double().exp().cumsum(dim=-1)
        cdf = cdf / cdf[:, -1:]  # exactly 1 at the end, whatever the float sum gave
        draws = torch.searchsorted(cdf, u_all[start:stop], right=True).clamp_(max=vocab - 1)  # [rows, n]
        ids, counts = _merge(draws, vocab)
        parts.append((ids, counts, torch.gather(flat, 1, ids)))
    ids, counts, lp = (torch.cat(p) for p in zip(*parts))
    return ids.reshape(*shape, n), counts.reshape(*shape, n), lp.reshape(*shape, n)


def _merge(draws: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: distinct drawn ids with their counts, most frequent first, padded with count 0."""
    rows, n = draws.shape
    order = draws.sort(dim=-1).values
    new = torch.ones_like(order, dtype=torch.bool)
    new[:, 1:] = order[:, 1:] != order[:, :-1]
    run = new.cumsum(dim=-1) - 1  # which distinct id (in sorted order) each draw belongs to
    counts = torch.zeros((rows, n), dtype=torch.int64, device=draws.device).scatter_add_(1, run, torch.ones_like(run))
    ids = torch.zeros((rows, n), dtype=torch.int64, device=draws.device).scatter_(1, run, order)
    # Most frequent first; ties by id (a stable sort of ids by count keeps them ascending).
    by_count = torch.sort(counts, dim=-1, descending=True, stable=True).indices
    ids, counts = torch.gather(ids, 1, by_count), torch.gather(counts, 1, by_count)
    ids = torch.where(counts > 0, ids, ids[:, :1])  # padding repeats the first id, with count 0
    return ids, counts
