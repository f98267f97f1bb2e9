"""Setting the learned reward's scale and offset, and its inputs' statistics, from the segments it is fit to.

The agent sees the ensemble's mean reward after each refit; :func:`normalize` keeps its spread and zero where
the agent expects them (the paper's normalization), :func:`standardize_on` fixes the inputs' statistics once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from prefrl.data import Segment
from prefrl.reward.ensemble import RewardEnsemble

if TYPE_CHECKING:
    from prefrl.segments import SegmentBuffer


def normalize(
    reward: RewardEnsemble,
    buffer: SegmentBuffer,
    *,
    center: str,
    std: float = 1.0,
    rng: np.random.Generator,
    on: list[Segment] | None = None,
) -> dict[str, float]:
    """Rescale each member to spread ``std`` over the real steps of ``on`` (default: the buffer's 1,000 most recent
    segments); pin the absorbing state at 0 when episodes end (any segment in the buffer ended one)."""
    if center == "auto":
        center = "absorbing" if buffer.any_terminated else "mean"
    return normalize_on(reward, buffer.recent(1000) if on is None else on, center=center, std=std, rng=rng)


def normalize_on(
    reward: RewardEnsemble, segs: list[Segment], *, center: str, std: float = 1.0, rng: np.random.Generator
) -> dict[str, float]:
    """:func:`normalize` on the real steps of ``segs``; ``center="auto"``: absorbing if one of them ended an episode.
    Returns the new shift and scale (``reward/norm_*``)."""
    if not segs:
        return {}
    if center == "auto":
        center = "absorbing" if any(s.terminated for s in segs) else "mean"
    obs, act = real_steps(segs)
    if len(obs) > 20_000:
        idx = rng.choice(len(obs), size=20_000, replace=False)
        obs, act = obs[idx], act[idx]
    return reward.set_normalization(obs, act, center=center, std=std)


def standardize_on(reward: RewardEnsemble, segs: Iterable[Segment]) -> None:
    """Standardize the reward model's inputs with the statistics of the real steps of ``segs``."""
    reward.set_input_normalization(*real_steps(list(segs)))


def real_steps(segs: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions of the real steps of ``segs`` (absorbing padding left out), concatenated.

    Examples:
        >>> import numpy as np
        >>> from prefrl.data import Segment
        >>> from prefrl.reward.normalize import real_steps
        >>> obs = np.arange(8, dtype=np.float32).reshape(4, 2)  # (T, obs_dim)
        >>> ended = Segment(0, obs, np.zeros(4, dtype=np.int64), np.zeros(4, np.float32), 3, True, "Toy")
        >>> [a.shape for a in real_steps([ended, ended])]  # 3 real steps each, the padded last one left out
        [(6, 2), (6,)]
    """
    return np.concatenate([s.obs[: s.length] for s in segs]), np.concatenate([s.actions[: s.length] for s in segs])
