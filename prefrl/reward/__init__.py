"""Reward model: a batched ensemble of reward nets fit to preferences (Christiano et al. 2017).

Examples:
    Segments whose true reward is their first observation coordinate, 120 pairs labelled by true return,
    and an ensemble of 3 MLPs fit to them; the learned reward then ranks observations the same way:

    >>> import gymnasium as gym
    >>> import numpy as np
    >>> from prefrl.data import Comparison, Segment
    >>> from prefrl.reward import RewardEnsemble, RewardTrainer
    >>> rng = np.random.default_rng(0)
    >>> def segment(i):
    ...     obs = rng.normal(size=(10, 3)).astype(np.float32)  # (T, obs_dim)
    ...     return Segment(i, obs, rng.integers(2, size=10), obs[:, 0].copy(), 10, False, "Toy")
    >>> segments = {i: segment(i) for i in range(40)}
    >>> pairs = [(i, (i + 1 + j) % 40) for i in range(40) for j in (0, 7, 19)]
    >>> def label(n, i, j):  # a fixed query id fixes which comparisons are held out for validation
    ...     return Comparison((i, j), int(segments[j].true_return > segments[i].true_return), query_id=f"q{n}")
    >>> labels = [label(n, i, j) for n, (i, j) in enumerate(pairs)]
    >>> obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    >>> ensemble = RewardEnsemble(obs_space, gym.spaces.Discrete(2), members=3, seed=0)
    >>> metrics = RewardTrainer(ensemble, seed=0).fit(labels, segments, epochs=10)
    >>> metrics["reward/n_train"], metrics["reward/n_val"], metrics["reward/val_acc"] > 0.8
    (71.0, 49.0, True)
    >>> ensemble.step_rewards(np.zeros((5, 3), np.float32), np.zeros(5, dtype=np.int64)).shape  # (K, N)
    (3, 5)
    >>> mean, std = ensemble.predict(np.array([[2.0, 0, 0], [-2.0, 0, 0]], np.float32), np.array([0, 0]))
    >>> bool(mean[0] > mean[1])
    True
"""

from prefrl.reward.ensemble import FeatureBank, RewardEnsemble
from prefrl.reward.losses import log_preference_probs, mean_over_answered, preference_accuracy, preference_loss
from prefrl.reward.nets import EnsembleCNN, EnsembleMLP, SpaceEncoder, is_image_space
from prefrl.reward.trainer import RewardTrainer, val_hash

__all__ = [
    "EnsembleCNN",
    "EnsembleMLP",
    "FeatureBank",
    "RewardEnsemble",
    "RewardTrainer",
    "SpaceEncoder",
    "is_image_space",
    "log_preference_probs",
    "mean_over_answered",
    "preference_accuracy",
    "preference_loss",
    "val_hash",
]
