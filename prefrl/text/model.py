"""A tiny GPT: a causal transformer language model with a KV cache for batched generation.

Small enough (~0.6 M parameters, 32 tokens of context at the defaults) to pretrain on the shipped
corpus in a few minutes on two CPU cores (:mod:`prefrl.text.pretrain`). Batches of prompts of different lengths are
left-padded with token 0 and carry an ``attention_mask`` (1 on real tokens); positions count real
tokens only, so a prompt gives the same logits however much padding precedes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prefrl.io import atomic_write


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 32
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


class KVCache:
    """Keys and values of every layer for the tokens seen so far, and their attention mask.

    ``keys[l]``, ``values[l]``: ``(B, H, S, D)``; ``mask``: ``(B, S)`` bool; ``positions``: ``(B,)`` next position.
    """

    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            if cache.keys[layer] is not None:
                k = torch.cat([cache.keys[layer], k], dim=2)  # (B, H, S + T, D)
                v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), dropout_p=p)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, T)`` token ids -> ``(B, T, V)`` logits (and ``(B, T, C)`` final hidden states).

        ``attention_mask`` ``(B, T)``: 1 on real tokens, 0 on left padding (default: all real). With a
        ``cache``, ``idx`` holds only the new tokens; the cache is extended in place.
        """
        B, T = idx.shape
        mask = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()  # (B, T)
        start = torch.zeros(B, dtype=torch.long, device=idx.device)  # (B,) position of the first new token
        past = torch.zeros(B, 0, dtype=torch.bool, device=idx.device)  # (B, S) mask of cached tokens
        if cache is not None and cache.mask is not None:
            start, past = cache.positions, cache.mask
        positions = start[:, None] + mask.long().cumsum(1) - 1  # (B, T) counts real tokens only
        if positions.max() >= self.cfg.block_size:
            raise ValueError(
                f"sequence of {int(positions.max()) + 1} tokens is longer than the model's block_size "
                f"({self.cfg.block_size}); shorten the prompt or the response"
            )
        keys = torch.cat([past, mask], dim=1)  # (B, S + T) which keys are real
        S = past.shape[1]
        causal = torch.ones(T, S + T, dtype=torch.bool, device=idx.device).tril(diagonal=S)  # (T, S + T)
        self_key = torch.zeros_like(causal)
        self_key[:, S:] = torch.eye(T, dtype=torch.bool, device=idx.device)  # padding attends to itself: no NaN
        allowed = (causal & keys[:, None, :]) | self_key  # (B, T, S + T)
        if cache is not None:
            cache.mask = keys
            cache.positions = positions[:, -1] + 1
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions.clamp_min(0)))  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, allowed, cache, layer)
        h = self.ln_f(x)  # (B, T, C)
        logits = self.head(h)  # (B, T, V)
        return (logits, h) if return_hidden else logits

    @torch.no_grad()
    def generate(
        self,
        prompts: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.7,
        stop_tokens: Sequence[int] = (),
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue a batch of left-padded ``(B, P)`` prompts; returns ``(B, max_new_tokens)`` new tokens.

        ``temperature=0`` is greedy. After a row writes one of ``stop_tokens`` it writes padding (0).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        B = prompts.shape[0]
        mask = torch.ones_like(prompts, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=prompts.device)
        done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
        cache = KVCache(self.cfg.n_layer) if use_cache else None
        seq, seq_mask, step_in = prompts, mask, prompts
        out = []
        for _ in range(max_new_tokens):
            if use_cache:
                logits = self(step_in, seq_mask[:, -step_in.shape[1] :], cache=cache)[:, -1]  # (B, V)
            else:
                logits = self(seq, seq_mask)[:, -1]  # (B, V)
            if temperature == 0:
                token = logits.argmax(-1)  # (B,)
            else:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            token = torch.where(done, torch.zeros_like(token), token)
            out.append(token)
            done = done | torch.isin(token, stop)
            step_in = token[:, None]  # (B, 1)
            seq = torch.cat([seq, step_in], dim=1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(step_in, dtype=torch.bool)], dim=1)
            if bool(done.all()):
                break
        tokens = torch.stack(out, dim=1)  # (B, n)
        return F.pad(tokens, (0, max_new_tokens - tokens.shape[1]))  # (B, max_new_tokens)


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``(B, P)`` ids left-padded with ``pad_id`` and their ``(B, P)`` bool attention mask."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, P - len(p) :] = True
    return ids, mask


def save_checkpoint(path: str | Path, model: GPT, *, words: Sequence[str], extra: dict[str, Any] | None = None) -> None:
    """Weights, config and vocabulary in one file (loadable with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"config": asdict(model.cfg), "state_dict": model.state_dict(), "words": list(words), **(extra or {})}
    with atomic_write(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: str | Path) -> tuple[GPT, list[str]]:
    """The model (in eval mode) and its vocabulary, from :func:`save_checkpoint`'s file."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        cfg = GPTConfig(**blob["config"])
    except Exception as e:  # unreadable, truncated or foreign file: torch raises many kinds
        raise ValueError(
            f"{path}: not a readable tiny-GPT checkpoint ({e}); write one with python -m prefrl.text.pretrain"
        ) from None
    model = GPT(cfg)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), list(blob["words"])
