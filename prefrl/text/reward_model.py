"""The text reward model: a language-model backbone and an ensemble of scalar heads on the last token.

As in Ziegler et al. (2019), the backbone starts as a copy of the policy's initial model ρ, and each
head reads the backbone's last hidden state at the response's last real token. The ``K`` heads are one
``Linear(E, K)``: one backbone pass scores a batch for every head. A per-head gain and bias make the
rewards of ρ's own samples mean 0 and standard deviation 1 (:meth:`TextRewardModel.normalize`), set
before training and again after each fit, so that a reward's scale means the same thing throughout a
run and the heads are comparable.

:class:`TextRewardTrainer` fits it to the core's comparisons, pairs and best-of-k alike, with the
core's loss (:func:`prefrl.reward.losses.preference_loss`: k-way softmax with the ε-mixture, ties as
½-½ targets, skips left out) and the core's stable validation split (:func:`~prefrl.reward.trainer.val_hash`).
Each head trains on its own bootstrap resample of the comparisons, expressed as per-head multiplicities,
so one backbone pass serves every head. With ``backbone_lr=0`` the backbone is frozen and its features
are computed once per fit: the affordable choice for SmolLM2.

:meth:`TextRewardModel.returns_of` gives what the core's query selection reads
(:func:`prefrl.segments.select_queries`, disagreement and entropy samplers) for text segments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prefrl.data import Comparison, DataError, Segment
from prefrl.reward.losses import preference_loss
from prefrl.reward.trainer import (
    ComparisonGroup,
    fit_metrics,
    group_by_k,
    referenced_segments,
    split_comparisons,
)
from prefrl.text.lm import LanguageModel, Rollout


def segment_parts(segment: Segment) -> tuple[list[int], list[int]]:
    """The prompt and response token ids of a text segment (see :func:`prefrl.text.oracles.text_segment`).

    The segment's first observation row is the text environment's flattened observation before the first
    response token: ``[length (= 0), left-padded prompt ..., zeros]``; its real actions are the response.
    """
    obs = np.asarray(segment.obs)
    if obs.ndim != 2 or obs.shape[1] < 2 or obs[0, 0] != 0 or segment.start != 0:
        raise DataError(
            f"segment {segment.id}: not a whole text response (expected the flattened observation of "
            "prefrl/TextContinuation-v0 starting at the response's first token)"
        )
    prompt = [int(t) for t in obs[0, 1:] if t != 0]
    if not prompt:
        raise DataError(f"segment {segment.id}: its first observation holds no prompt tokens")
    return prompt, [int(t) for t in np.asarray(segment.actions)[: segment.length]]


def segments_to_batch(segments: Sequence[Segment], *, pad_id: int, end_ids: Sequence[int]) -> Rollout:
    """Text segments -> a :class:`Rollout` of their prompts and responses (tokens and masks)."""
    parts = [segment_parts(s) for s in segments]
    return Rollout.from_lists([p for p, _ in parts], [r for _, r in parts], pad_id=pad_id, end_ids=end_ids)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` bool -> ``(B,)`` index of each row's last real token."""
    ar = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask.bool(), ar, -1).max(1).values


POOLS = ("last", "mean")
"""What the heads read: the hidden state at the last real token (Ziegler et al.), or the mean over the
response's tokens (each token's state can tell whether that token echoes the prompt, which the last one
alone carries poorly in a small model; the summarize task learns faster with it)."""


class TextRewardModel(nn.Module):
    """Backbone (a copy of ρ) + ``heads`` scalar heads on the last real token, normalized on ρ's samples.

    Args:
        init: the policy's initial model ρ; the backbone is a trainable copy (ρ itself is not touched).
        heads: ensemble size ``K``.
        seed: initializes the heads.
        pool: ``last`` (the hidden state at the last real token) or ``mean`` (the mean over the response's
            tokens: every scoring call then needs the ``response_mask``), see :data:`POOLS`.
    """

    def __init__(self, init: LanguageModel, *, heads: int = 3, seed: int = 0, pool: str = "last") -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"TextRewardModel: heads must be >= 1, got {heads}")
        if pool not in POOLS:
            raise ValueError(f"TextRewardModel: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.pool = pool
        self.backbone = init.clone()
        self.backbone.requires_grad_(True)
        E = self.backbone.hidden_size
        self.heads = nn.Linear(E, heads)  # one matmul for every head
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.heads.weight.copy_(torch.randn(heads, E, generator=g) / math.sqrt(E + 1))
            self.heads.bias.zero_()
        self.register_buffer("gain", torch.ones(heads))  # (K,)
        self.register_buffer("bias", torch.zeros(heads))  # (K,)
        self.norm_batch: Rollout | None = None  # ρ's samples the normalization was last set on

    @property
    def members(self) -> int:
        return self.heads.out_features

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    # -- scoring ------------------------------------------------------------------------------
    def features(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, E)`` backbone hidden state at each row's last real token, or (``pool="mean"``) its mean over
        the tokens of ``response_mask`` (``(B, S)`` bool, required then)."""
        if self.pool == "mean" and response_mask is None:
            raise ValueError("a reward model with pool='mean' needs the response_mask of what it scores")
        mask = attention_mask.bool()
        real = mask.any(0).nonzero()  # columns where some row has a real token
        lo, hi = int(real.min()), int(real.max()) + 1
        tokens, mask = tokens[:, lo:hi], mask[:, lo:hi]  # (B, S') padding columns dropped: positions are unchanged
        hidden = self.backbone.hidden_states(tokens, mask)  # (B, S', E)
        if self.pool == "mean":
            assert response_mask is not None
            w = (response_mask[:, lo:hi].bool() & mask).to(hidden.dtype)  # (B, S')
            return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)  # (B, E)
        last = last_token_index(mask)  # (B,)
        return hidden[torch.arange(len(last), device=hidden.device), last]  # (B, E)

    def head_rewards(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` features -> ``(K, B)`` normalized reward of every head."""
        raw = self.heads(features).T  # (K, B)
        return self.gain[:, None] * raw + self.bias[:, None]

    def forward(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, S)`` tokens and masks -> ``(K, B)`` normalized reward of every head."""
        return self.head_rewards(self.features(tokens, attention_mask, response_mask))

    @torch.no_grad()
    def rewards(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor | None = None,
        *,
        chunk: int = 64,
    ) -> torch.Tensor:
        """``(K, B)`` normalized rewards, in eval mode, without grad, ``chunk`` rows at a time."""
        was = self.training
        self.eval()
        try:
            parts = [
                self(
                    tokens[s : s + chunk],
                    attention_mask[s : s + chunk],
                    None if response_mask is None else response_mask[s : s + chunk],
                )
                for s in range(0, len(tokens), chunk)
            ]
        finally:
            self.train(was)
        return torch.cat(parts, 1)

    def predict(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` mean over heads and ``(B,)`` standard deviation across heads (the disagreement)."""
        r = self.rewards(tokens, attention_mask, response_mask)  # (K, B)
        std = r.std(0, unbiased=False) if self.members > 1 else torch.zeros_like(r[0])
        return r.mean(0), std

    def batch(self, segments: Sequence[Segment]) -> Rollout:
        """Text segments -> tokens and masks for this model's tokenizer."""
        return segments_to_batch(segments, pad_id=self.tokenizer.pad_id, end_ids=self.tokenizer.end_ids)

    def returns_of(self, segments: Sequence[Segment]) -> np.ndarray:
        """``(K, n)`` reward of each segment under each head: what :func:`prefrl.segments.select_queries` reads."""
        if not segments:
            return np.zeros((self.members, 0), dtype=np.float32)
        b = self.batch(segments)
        return self.rewards(b.tokens, b.attention_mask, b.response_mask).numpy()

    # -- normalization ------------------------------------------------------------------------
    @torch.no_grad()
    def normalize(self, batch: Rollout | torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, float]:
        """Set each head's gain and bias so its rewards on ``batch`` (ρ's samples) have mean 0 and std 1.

        ``batch`` is a :class:`Rollout` or a ``(B, S)`` token tensor with its ``attention_mask``. It is kept,
        so :meth:`renormalize` can reuse it after training. Returns the raw mean and std (over heads).
        """
        if isinstance(batch, Rollout):
            rollout = batch
        else:
            if attention_mask is None:
                raise ValueError("normalize: pass the attention_mask with a token tensor (or pass a Rollout)")
            if self.pool == "mean":  # a bare tensor does not say where the responses are
                raise ValueError("normalize: a reward model with pool='mean' needs a Rollout (its response_mask)")
            rollout = Rollout(
                batch, attention_mask.bool(), attention_mask.bool(), 0, torch.zeros(len(batch), dtype=torch.bool)
            )
        if len(rollout) < 2:
            raise ValueError(f"normalize: need at least 2 samples of ρ, got {len(rollout)}")
        self.gain.fill_(1.0)
        self.bias.zero_()
        raw = self.rewards(rollout.tokens, rollout.attention_mask, rollout.response_mask)  # (K, B) identity gain/bias
        mean, std = raw.mean(1), raw.std(1).clamp_min(1e-6)  # (K,)
        self.gain.copy_(1.0 / std)
        self.bias.copy_(-mean / std)
        self.norm_batch = rollout
        return {"reward/norm_raw_mean": float(mean.mean()), "reward/norm_raw_std": float(std.mean())}

    def renormalize(self) -> dict[str, float]:
        """:meth:`normalize` again on the samples it was last set on (no-op before the first call)."""
        return {} if self.norm_batch is None else self.normalize(self.norm_batch)


class TextRewardTrainer:
    """Fits a :class:`TextRewardModel` to pair and best-of-k comparisons of text segments.

    Args:
        model: the reward model (fitted in place).
        lr: Adam learning rate of the heads.
        backbone_lr: learning rate of the backbone; 0 freezes it (features are then computed once per fit).
        batch_size: comparisons per gradient step.
        epsilon: probability that an answer is uniformly random (in the loss).
        val_fraction: share of comparisons held out, by the core's stable hash of ``query_id``.
        l2: coefficient of ``l2 * sum of squared head weights``.
        bootstrap: each head trains on its own resample of the train split (else all on all of it).
        seed: seeds the resamples and the batch order.
    """

    def __init__(
        self,
        model: TextRewardModel,
        *,
        lr: float = 1e-3,
        backbone_lr: float = 1e-4,
        batch_size: int = 32,
        epsilon: float = 0.1,
        val_fraction: float = 1 / math.e,
        l2: float = 1e-3,
        bootstrap: bool = True,
        seed: int = 0,
    ) -> None:
        if lr <= 0 or backbone_lr < 0 or batch_size < 1 or l2 < 0:
            raise ValueError(
                f"bad text reward trainer settings: need lr > 0, backbone_lr >= 0, batch_size >= 1, l2 >= 0; got "
                f"lr={lr}, backbone_lr={backbone_lr}, batch_size={batch_size}, l2={l2}"
            )
        if not 0.0 <= epsilon < 1.0 or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"epsilon and val_fraction must be in [0, 1), got {epsilon} and {val_fraction}")
        self.model = model
        self.lr, self.backbone_lr, self.batch_size = lr, backbone_lr, batch_size
        self.epsilon, self.val_fraction, self.l2, self.bootstrap = epsilon, val_fraction, l2, bootstrap
        self.frozen = backbone_lr == 0
        model.backbone.requires_grad_(not self.frozen)
        groups = [{"params": model.heads.parameters(), "lr": lr}]
        if not self.frozen:
            groups.append({"params": model.backbone.parameters(), "lr": backbone_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    def fit(
        self, comparisons: Sequence[Comparison], segments: Mapping[int, Segment], *, epochs: int = 1
    ) -> dict[str, float]:
        """Train for ``epochs`` passes over the train split, then re-normalize on ρ's samples.

        Returns ``reward/*`` metrics: train/val loss and accuracy (mean over heads), split sizes, time.
        """
        t0 = time.perf_counter()
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        train, val = split_comparisons(comparisons, self.val_fraction)
        metrics = fit_metrics(train, val, self.steps)
        if train:
            used, row = referenced_segments([*train, *val], segments)
            batch = self.model.batch(used)
            train_g, val_g = group_by_k(train, row), group_by_k(val, row)
            feats = self._frozen_features(batch) if self.frozen else None  # (S, E) or None
            K = self.model.members
            # Each head's bootstrap resample as multiplicities: (K, n) counts per group, summing to n per head.
            weights = [self._resample(K, len(g)) for g in train_g]
            for _ in range(epochs):
                self._train_epoch(batch, feats, train_g, weights)
            metrics["reward/train_loss"], metrics["reward/train_acc"] = self.evaluate(batch, feats, train_g)
            if val_g:
                metrics["reward/val_loss"], metrics["reward/val_acc"] = self.evaluate(batch, feats, val_g)
        metrics.update(self.model.renormalize())
        metrics["reward/steps"] = float(self.steps)
        metrics["reward/fit_s"] = time.perf_counter() - t0
        return metrics

    def _resample(self, K: int, n: int) -> torch.Tensor:
        if not self.bootstrap:
            return torch.ones(K, n)
        draws = self.rng.integers(0, n, size=(K, n))  # (K, n)
        return torch.from_numpy(np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float32))

    @torch.no_grad()
    def _frozen_features(self, batch: Rollout, chunk: int = 64) -> torch.Tensor:
        m = self.model
        m.eval()
        parts = [m.features(batch.tokens[s : s + chunk], batch.attention_mask[s : s + chunk],
                            batch.response_mask[s : s + chunk]) for s in range(0, len(batch), chunk)]  # fmt: skip
        return torch.cat(parts)  # (S, E)

    def _rewards(self, batch: Rollout, feats: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """``(K, len(rows))`` rewards of the given segment rows (with grad)."""
        if feats is not None:
            return self.model.head_rewards(feats[rows])
        return self.model(batch.tokens[rows], batch.attention_mask[rows], batch.response_mask[rows])

    def _group_rewards(self, batch: Rollout, feats: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        """``(b, k)`` segment rows -> ``(K, b, k)`` rewards; each distinct segment is scored once."""
        rows, inverse = torch.unique(idx, return_inverse=True)  # (U,), (b, k)
        r = self._rewards(batch, feats, rows)  # (K, U)
        return r[:, inverse]  # (K, b, k)

    def _train_epoch(
        self, batch: Rollout, feats: torch.Tensor | None, groups: list[ComparisonGroup], weights: list[torch.Tensor]
    ) -> None:
        m, bs = self.model, self.batch_size
        chunks = []  # (group, positions)
        for gi, g in enumerate(groups):
            order = torch.from_numpy(self.rng.permutation(len(g)))
            chunks += [(gi, order[s : s + bs]) for s in range(0, len(g), bs)]
        m.train()
        if self.frozen:
            m.backbone.eval()
        for ci in self.rng.permutation(len(chunks)):
            gi, pos = chunks[ci]
            g, w = groups[gi], weights[gi][:, pos]  # (K, b) multiplicity of each comparison in each head's resample
            if not bool(w.any()):
                continue
            R = self._group_rewards(batch, feats, g.idx[pos])  # (K, b, k)
            loss = preference_loss(R, g.labels[pos], self.epsilon)  # (K, b)
            data = (w * loss).sum(1) / len(pos)  # (K,) each head on its own resample
            total = data.sum() + self.l2 * m.heads.weight.pow(2).sum()
            if not math.isfinite(total.item()):
                raise FloatingPointError(
                    f"text reward loss became {total.item()} at step {self.steps}; lower the learning rates "
                    f"(lr={self.lr}, backbone_lr={self.backbone_lr})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.steps += 1

    @torch.no_grad()
    def evaluate(
        self, batch: Rollout, feats: torch.Tensor | None, groups: list[ComparisonGroup]
    ) -> tuple[float, float]:
        """Mean loss and accuracy on strict (non-tie) labels, averaged over heads, in eval mode."""
        m = self.model
        m.eval()
        if not groups:
            return math.nan, math.nan
        # (K, S) every segment once
        r = (
            m.head_rewards(feats)
            if feats is not None
            else m.rewards(batch.tokens, batch.attention_mask, batch.response_mask)
        )
        loss_sum, n, hits, strict_n = 0.0, 0, 0.0, 0
        for g in groups:
            R = r[:, g.idx]  # (K, n, k)
            loss_sum += float(preference_loss(R, g.labels, self.epsilon).mean(0).sum())
            n += len(g)
            strict = g.labels >= 0  # (n,)
            hits += float(((R.argmax(-1) == g.labels) & strict).float().mean(0).sum())
            strict_n += int(strict.sum())
        return loss_sum / max(n, 1), (hits / strict_n if strict_n else math.nan)
