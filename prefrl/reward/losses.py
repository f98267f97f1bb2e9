"""The preference loss: a k-way softmax (Bradley-Terry for pairs) over summed segment rewards.

With probability ``epsilon`` the answer is assumed uniformly random (the paper's 10 %), so
``P_i = (1 - eps) * softmax(returns)_i + eps / k``, computed in log space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefrl.data import SKIP, TIE


def _targets(labels: torch.Tensor, k: int) -> torch.Tensor:
    """``(..., M)`` labels -> ``(..., M, k)`` targets: one-hot, uniform for TIE, zeros for SKIP."""
    onehot = F.one_hot(labels.clamp_min(0), k).float()  # (..., M, k)
    uniform = torch.full_like(onehot, 1.0 / k)
    t = torch.where((labels == TIE).unsqueeze(-1), uniform, onehot)
    return t * (labels != SKIP).unsqueeze(-1)


def log_preference_probs(returns: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """``(..., M, k)`` returns -> ``(..., M, k)`` log P(item i is preferred), with the epsilon mixture."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    k = returns.shape[-1]
    logp = F.log_softmax(returns, dim=-1)  # (..., M, k)
    if epsilon == 0.0:
        return logp
    return torch.logaddexp(logp + math.log1p(-epsilon), torch.tensor(math.log(epsilon / k), dtype=logp.dtype))


def preference_loss(returns: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy per comparison.

    Args:
        returns: ``(..., M, k)`` summed segment rewards (logits) of the k compared segments.
        labels: ``(M,)`` or ``(..., M)`` long: index of the preferred segment, TIE (-1) or SKIP (-2).
        epsilon: probability that an answer is uniformly random.

    Returns:
        ``(..., M)`` loss, 0 where the label is SKIP.

    Examples:
        >>> import torch
        >>> from prefrl.data import TIE
        >>> from prefrl.reward import preference_loss
        >>> returns = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 3.0]])  # (M, k) summed segment rewards
        >>> loss = preference_loss(returns, torch.tensor([0, 1, TIE]), epsilon=0.1)  # (M,)
        >>> [round(x, 3) for x in loss.tolist()]  # agreeing, disagreeing, a tie
        [0.171, 1.85, 1.01]
    """
    logp = log_preference_probs(returns, epsilon)  # (..., M, k)
    t = _targets(labels, returns.shape[-1])  # (..., M, k)
    return -torch.where(t > 0, t * logp, torch.zeros_like(logp)).sum(-1)  # (..., M)


def mean_over_answered(loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(..., M)`` per-comparison loss -> ``(...)`` mean over non-SKIP rows (0 if every row is skipped)."""
    answered = (labels != SKIP).to(loss.dtype)  # (M,) | (..., M)
    n = answered.sum(-1).clamp_min(1.0)
    return (loss * answered).sum(-1) / n


def preference_accuracy(returns: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(..., M, k)``, ``(M,) | (..., M)`` -> ``(...)`` fraction of non-tie, non-skip rows whose argmax is the label.

    NaN where no row has a strict preference.
    """
    strict = labels >= 0
    hit = (returns.argmax(-1) == labels) & strict  # (..., M)
    n = strict.sum(-1).to(returns.dtype)
    return hit.sum(-1).to(returns.dtype) / n  # 0/0 -> NaN
