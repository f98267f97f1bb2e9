"""Reward model: a batched ensemble of reward nets fit to preferences (Christiano et al. 2017)."""

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
