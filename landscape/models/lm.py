"""Language models for the registry: a decoder-only Transformer and an LSTM, tokens (B, T) in, logits (B, T, V) out.

Both are built from plain keyword arguments (checkpoints store them) and take the vocabulary as `num_classes` and
the sequence length as `input_shape` = (T,), the way data.datasets describes a corpus, so the trainer and every
landscape tool treat them like any registered model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.base.errors import ConfigError


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles (Su et al. 2021), each (seq_len, head_dim / 2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of x (B, H, T, D) by the position's angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, by torch's scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_head: int, dropout: float, rotary: bool, seq_len: int):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        if rotary:  # buffers, not state: rebuilt from the kwargs, so not in the state dict
            cos, sin = rotary_tables(seq_len, d_model // n_head)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.rotary = rotary

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        if self.rotary:
            q, k = apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, dropout: float, rotary: bool, seq_len: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout, rotary, seq_len)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A decoder-only (GPT-style) Transformer: token embedding, learned or rotary positions, pre-norm blocks, a
    final LayerNorm and a linear head, optionally tied to the embedding. Initialized as GPT-2 does (normal 0.02,
    residual projections scaled by 1/sqrt(2 n_layer))."""

    def __init__(self, vocab_size: int, seq_len: int, *, d_model: int = 64, n_layer: int = 2, n_head: int = 4,
                 mlp_ratio: int = 4, positions: str = "learned", tie_weights: bool = False, dropout: float = 0.0):
        super().__init__()
        if d_model % n_head or (positions == "rotary" and (d_model // n_head) % 2):
            raise ConfigError(f"d_model {d_model} must split into {n_head} heads (of even size for rotary positions)")
        if positions not in ("learned", "rotary"):
            raise ConfigError(f"positions {positions!r} is not one of: learned, rotary")
        self.seq_len = seq_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout, positions == "rotary", seq_len)
                                    for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
        if tie_weights:
            self.head.weight = self.tok.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.seq_len}")
        x = self.tok(tokens.long())  # shards may hold uint16 tokens
        if self.pos is not None:
            x = x + self.pos.weight[:t]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class LSTMLanguageModel(nn.Module):
    """Embedding, a stacked LSTM and a linear head (optionally tied when hidden == d_model)."""

    def __init__(self, vocab_size: int, d_model: int = 64, hidden: int = 128, n_layer: int = 1,
                 tie_weights: bool = False, dropout: float = 0.0):
        super().__init__()
        if tie_weights and hidden != d_model:
            raise ConfigError(f"tie_weights needs hidden == d_model, got {hidden} and {d_model}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, hidden, n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.head.weight = self.tok.weight

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.lstm(self.tok(tokens.long()))
        return self.head(out)
