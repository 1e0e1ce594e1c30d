"""A small GPT student for per-token transfer sets (`--student train.students:gpt`).

    gpt(num_classes=V, input_shape=(L,), width=64, layers=2, heads=2, mlp_ratio=4, tied=True, dropout=0.0)

Token + learned position embeddings, `layers` pre-LayerNorm blocks (causal
self-attention through torch's scaled_dot_product_attention, then a GELU MLP),
a final LayerNorm and a head to V logits, tied to the token embedding by default.
forward(input_ids [B, L] int64, attention_mask [B, L]) -> logits [B, L, V]: the
logits at t see tokens 0..t only, and never a padding token (attention_mask 0),
except each position itself, so a padding position has finite logits (its loss
is masked out anyway).
"""

from __future__ import annotations

import torch
from torch import nn

from transferset.errors import UserError


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        shape = (b, length, self.heads, width // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, head width)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, length, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, length: int, width: int, layers: int, heads: int, mlp_ratio: int, tied: bool, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.tokens.weight
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        where = torch.arange(length, device=input_ids.device)
        x = self.tokens(input_ids.long()) + self.positions(where)  # [B, L, width]
        causal = where[None, :] <= where[:, None]  # [L, L]: key <= query
        if attention_mask is None:
            allowed = causal[None, None]
        else:  # no real query attends to a padding key; every query sees itself (no all-masked row)
            real_key = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
            allowed = causal & (real_key | torch.eye(length, dtype=torch.bool, device=input_ids.device))  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed)
        return self.head(self.ln(x))  # [B, L, V]


def gpt(num_classes: int, input_shape: tuple[int, ...], width: int = 64, layers: int = 2, heads: int = 2, mlp_ratio: int = 4,
        tied: bool = True, dropout: float = 0.0) -> nn.Module:
    """A causal LM over `num_classes` tokens and `input_shape[0]` positions."""
    if len(input_shape) != 1:
        raise UserError(f"train.students:gpt reads token rows (a per-token transfer set), got input shape {tuple(input_shape)}; "
                        f"use train.students:mlp or cnn for class targets")
    if width % heads:
        raise UserError(f"train.students:gpt: width {width} must be a multiple of heads {heads}; fix --student-arg")
    return GPT(num_classes, input_shape[0], width, layers, heads, mlp_ratio, tied, dropout)
