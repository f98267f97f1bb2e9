"""Fit a RewardEnsemble to comparisons: bootstrap per member, held-out validation, adaptive L2."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from prefrl.data import SKIP, Comparison, Segment
from prefrl.reward.ensemble import FeatureBank, RewardEnsemble
from prefrl.reward.losses import preference_loss

EVAL_MAX = 2048  # comparisons per k-group (per member) used to measure the train loss after each epoch


def val_hash(query_id: str) -> float:
    """Stable position of a query in [0, 1): md5 of its id. A comparison is held out iff this < val_fraction."""
    return int.from_bytes(hashlib.md5(query_id.encode()).digest()[:8], "big") / 2.0**64


def split_comparisons(
    comparisons: Sequence[Comparison], val_fraction: float
) -> tuple[list[Comparison], list[Comparison]]:
    """Answered (not skipped) comparisons -> ``(train, val)`` by :func:`val_hash`; all train when none would be."""
    answered = [c for c in comparisons if c.label != SKIP]
    train = [c for c in answered if val_hash(c.query_id) >= val_fraction]
    val = [c for c in answered if val_hash(c.query_id) < val_fraction]
    if not train:  # too few answers to hold any out
        train, val = val, []
    return train, val


class ComparisonGroup:
    """Comparisons with the same k: bank rows ``idx`` ``(n, k)`` and labels ``(n,)``."""

    def __init__(self, comparisons: list[Comparison], row: dict[int, int]):
        self.idx = torch.tensor([[row[i] for i in c.segment_ids] for c in comparisons], dtype=torch.long)  # (n, k)
        self.labels = torch.tensor([c.label for c in comparisons], dtype=torch.long)  # (n,)

    def __len__(self) -> int:
        return len(self.labels)


def group_by_k(comparisons: list[Comparison], row: dict[int, int]) -> list[ComparisonGroup]:
    by_k: dict[int, list[Comparison]] = {}
    for c in comparisons:
        by_k.setdefault(c.k, []).append(c)
    return [ComparisonGroup(cs, row) for _, cs in sorted(by_k.items())]


def referenced_segments(
    comparisons: Sequence[Comparison], segments: Mapping[int, Segment]
) -> tuple[list[Segment], dict[int, int]]:
    """The segments ``comparisons`` refer to, each once in first-seen order, and their row per segment id."""
    ids = list(dict.fromkeys(i for c in comparisons for i in c.segment_ids))
    missing = [i for i in ids if i not in segments]
    if missing:
        raise ValueError(f"comparisons refer to segments {missing[:5]} missing from `segments`; pass all of them")
    return [segments[i] for i in ids], {sid: r for r, sid in enumerate(ids)}


def fit_metrics(train: Sequence[Any], val: Sequence[Any], steps: int) -> dict[str, float]:
    """The ``reward/*`` metrics a fit starts from: no loss or accuracy until an epoch is scored (NaN), the
    sizes of the train and validation splits, and the gradient steps taken so far."""
    return {
        "reward/train_loss": math.nan,
        "reward/val_loss": math.nan,
        "reward/train_acc": math.nan,
        "reward/val_acc": math.nan,
        "reward/n_train": float(len(train)),
        "reward/n_val": float(len(val)),
        "reward/steps": float(steps),
    }


class RewardTrainer:
    """Fits a :class:`RewardEnsemble`; the L2 strength and Adam state persist across :meth:`fit` calls.

    Args:
        ensemble: the model to fit (in place).
        lr: Adam learning rate.
        batch_size: comparisons per member per gradient step.
        epsilon: probability that an answer is uniformly random (in the loss).
        val_fraction: share of comparisons held out (by a stable hash of ``query_id``) to adapt the L2.
        l2: initial coefficient of ``l2 * sum of squared weights``.
        l2_bounds: after each epoch, l2 grows if val_loss / train_loss is above the upper bound and shrinks
            if below the lower one.
        l2_factor: multiplicative step of that adaptation.
        l2_range: the adaptation keeps l2 within these limits (the penalty sums every member's squared
            weights, so past ~1e-2 it flattens the reward and the agent sees noise).
        min_val: adapt only with at least this many held-out comparisons; fewer give a ratio that is noise.
        seed: seeds the bootstrap, the batch order and dropout.
    """

    def __init__(
        self,
        ensemble: RewardEnsemble,
        *,
        lr: float = 1e-3,
        batch_size: int = 64,
        epsilon: float = 0.1,
        val_fraction: float = 1 / math.e,
        l2: float = 1e-3,
        l2_bounds: tuple[float, float] = (1.1, 1.5),
        l2_factor: float = 1.1,
        l2_range: tuple[float, float] = (1e-5, 1e-2),
        min_val: int = 10,
        seed: int = 0,
    ):
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1 or lr <= 0 or l2 < 0 or l2_factor <= 1 or not 0 < l2_bounds[0] < l2_bounds[1]:
            raise ValueError(
                "bad trainer settings: need batch_size >= 1, lr > 0, l2 >= 0, l2_factor > 1, 0 < l2_bounds[0] < "
                f"l2_bounds[1]; got batch_size={batch_size}, lr={lr}, l2={l2}, l2_factor={l2_factor}, "
                f"l2_bounds={l2_bounds}"
            )
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.ensemble = ensemble
        self.lr, self.batch_size, self.epsilon = lr, batch_size, epsilon
        self.val_fraction, self.l2_bounds, self.l2_factor = val_fraction, tuple(l2_bounds), l2_factor
        self.l2 = float(l2)
        self.l2_range, self.min_val = tuple(l2_range), min_val
        self.optimizer = torch.optim.Adam(ensemble.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.steps = 0  # gradient steps over all fits

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """L2 strength, step count, Adam state and generator states (copies, safe to keep while training)."""
        return {
            "l2": self.l2,
            "steps": self.steps,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.l2 = float(state["l2"])
        self.steps = int(state["steps"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.rng.bit_generator.state = state["rng"]
        self.torch_rng.set_state(state["torch_rng"])

    # -- fitting ------------------------------------------------------------------------------
    def fit(
        self, comparisons: Sequence[Comparison], segments: Mapping[int, Segment], *, epochs: int, min_steps: int = 0
    ) -> dict[str, float]:
        """Train every member on its own bootstrap resample of the train split for ``epochs`` epochs
        (more if needed to take at least ``min_steps`` gradient steps). Returns ``reward/*`` metrics of the last epoch.
        """
        t0 = time.perf_counter()
        if epochs < 0 or min_steps < 0:
            raise ValueError(f"epochs and min_steps must be >= 0, got {epochs} and {min_steps}")
        train, val = split_comparisons(comparisons, self.val_fraction)
        metrics = {
            **fit_metrics(train, val, self.steps),
            "reward/l2": self.l2,
            "reward/epochs": 0.0,
            "reward/fit_s": 0.0,
            "reward/epoch_s": math.nan,
        }
        if not train:
            metrics["reward/fit_s"] = time.perf_counter() - t0
            return metrics

        # Net inputs of every referenced segment, once: (S, T, ...) and mask (S, T).
        used, row = referenced_segments([*train, *val], segments)
        bank = self.ensemble.feature_bank(used)
        train_g, val_g = group_by_k(train, row), group_by_k(val, row)

        K = self.ensemble.members
        # Each member's bootstrap resample, per k-group: positions into the group, (K, n).
        boot = [torch.from_numpy(self.rng.integers(0, len(g), size=(K, len(g)))) for g in train_g]
        steps_per_epoch = sum(math.ceil(len(g) / self.batch_size) for g in train_g)
        n_epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))

        t_epochs = time.perf_counter()
        # Measuring train/val loss costs about as much as an epoch on small label sets: do it ~10 times per fit.
        every = max(1, n_epochs // 10)
        for epoch in range(n_epochs):
            self._train_epoch(bank, train_g, boot)
            if (epoch + 1) % every and epoch + 1 < n_epochs:
                continue
            train_loss, train_acc = self._evaluate(bank, train_g, [b[:, :EVAL_MAX] for b in boot])
            metrics.update({"reward/train_loss": train_loss, "reward/train_acc": train_acc})
            if val_g:
                val_loss, val_acc = self._evaluate(bank, val_g, None)
                metrics.update({"reward/val_loss": val_loss, "reward/val_acc": val_acc})
                if len(val) >= self.min_val:
                    self._adapt_l2(val_loss, train_loss)
            metrics["reward/epochs"] = float(epoch + 1)
        t1 = time.perf_counter()
        metrics.update({"reward/l2": self.l2, "reward/steps": float(self.steps), "reward/fit_s": t1 - t0})
        if n_epochs:
            metrics["reward/epoch_s"] = (t1 - t_epochs) / n_epochs  # training + evaluation, without setup
        return metrics

    def _train_epoch(self, bank: FeatureBank, groups: list[ComparisonGroup], boot: list[torch.Tensor]) -> None:
        ens, K, bs = self.ensemble, self.ensemble.members, self.batch_size
        batches = []  # (group, (K, b) positions into the group)
        for gi, (g, b) in enumerate(zip(groups, boot, strict=True)):
            order = torch.from_numpy(np.argsort(self.rng.random((K, len(g))), axis=1))  # (K, n) per-member shuffle
            shuffled = torch.gather(b, 1, order)  # (K, n)
            batches += [(gi, shuffled[:, s : s + bs]) for s in range(0, len(g), bs)]
        ens.train()
        weights = ens.weight_matrices()
        for bi in self.rng.permutation(len(batches)):
            gi, pos = batches[bi]
            g = groups[gi]
            idx, labels = g.idx[pos], g.labels[pos]  # (K, b, k), (K, b); no SKIP here
            b, k = labels.shape[1], idx.shape[-1]
            rows = max(1, ens.chunk_steps // (k * bank.T))  # big (image) batches: accumulate gradients over parts
            self.optimizer.zero_grad(set_to_none=True)
            data = torch.zeros(K)
            for s in range(0, b, rows):
                R = ens.bank_returns(bank, idx[:, s : s + rows], per_member=True, generator=self.torch_rng)  # (K, r, k)
                part = preference_loss(R, labels[:, s : s + rows], self.epsilon).sum(-1) / b  # (K,) share of the mean
                part.sum().backward()  # members are independent: summing keeps each member's own gradient
                data += part.detach()
            penalty = self.l2 * sum(w.pow(2).sum() for w in weights)  # each member's own weights
            penalty.backward()
            loss = float(data.sum() + penalty.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"reward model loss became {loss} at step {self.steps}; lower the learning rate "
                    f"(lr={self.lr}) or check the segments' obs/actions for NaN or huge values"
                )
            self.optimizer.step()
            self.steps += 1

    @torch.no_grad()
    def _evaluate(
        self, bank: FeatureBank, groups: list[ComparisonGroup], boot: list[torch.Tensor] | None
    ) -> tuple[float, float]:
        """Mean loss (without L2) and accuracy over members, in eval mode.

        With ``boot``, each member is scored on its own bootstrap positions ``(K, n)``; else all on every row.
        """
        ens = self.ensemble
        ens.eval()
        loss_sum, n, hits, n_strict = 0.0, 0, 0.0, 0  # hits / n_strict count over members
        for gi, g in enumerate(groups):
            if boot is None:
                R = ens.bank_returns(bank, g.idx, per_member=False)  # (K, n, k)
                labels = g.labels  # (n,)
            else:
                R = ens.bank_returns(bank, g.idx[boot[gi]], per_member=True)  # (K, n, k)
                labels = g.labels[boot[gi]]  # (K, n)
            loss = preference_loss(R, labels, self.epsilon)  # (K, n)
            loss_sum += float(loss.mean(0).sum())
            n += loss.shape[1]
            strict = (labels >= 0).expand(loss.shape)  # (K, n) ties do not count
            hits += float(((R.argmax(-1) == labels) & strict).sum())
            n_strict += int(strict.sum())
        mean_loss = loss_sum / max(n, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"reward model loss became {mean_loss} on evaluation; lower the learning rate (lr={self.lr}) "
                "or check the segments' obs/actions for NaN or huge values"
            )
        return mean_loss, (hits / n_strict if n_strict else math.nan)

    def _adapt_l2(self, val_loss: float, train_loss: float) -> None:
        lo, hi = self.l2_bounds
        ratio = val_loss / train_loss if train_loss > 1e-12 else math.inf
        if ratio > hi:
            self.l2 *= self.l2_factor
        elif ratio < lo:
            self.l2 /= self.l2_factor
        self.l2 = min(max(self.l2, self.l2_range[0]), self.l2_range[1])
