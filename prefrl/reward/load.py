"""Another run's learned reward, for a run or a command that did not learn it: as of that run's last checkpoint
(:func:`load_reward`), copied into a run that trains on it frozen (:func:`freeze_reward`), or fit afresh to that
run's first answers (:func:`refit_reward`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from prefrl.config import ConfigError, TrainConfig, loads_config
from prefrl.data import SKIP, ComparisonStore
from prefrl.io import atomic_write
from prefrl.make import make_eval_env, make_reward, make_trainer, reward_center
from prefrl.reward.ensemble import RewardEnsemble
from prefrl.reward.normalize import normalize_on, standardize_on
from prefrl.run import RunDir


def refit_reward(run: RunDir, labels: int) -> RewardEnsemble:
    """A preference run's reward fit afresh to its first ``labels`` answers (``reward.initial_epochs`` epochs) and
    normalized on the segments they compare: near enough the reward the run's agent had when that many were in,
    to ask what it paid for then (``prefrl eval AGENT_RUN --reward-of RUN --labels N``)."""
    cfg = run.load_config()
    if cfg.reward_source != "learned" or not run.labels_path.exists():
        raise FileNotFoundError(
            f"{run.path}: no labels ({run.labels_path.name}); give a run that learns from preferences"
        )
    with ComparisonStore(run.labels_path) as store:
        answers = store.comparisons()
        if not 1 <= labels <= len(answers):
            raise ConfigError(f"--labels {labels}: {run.path} has {len(answers)} answers; give 1 to {len(answers)}")
        first = [c for c in answers[:labels] if c.label != SKIP]
        segments = store.segments(i for c in first for i in c.segment_ids)
    torch.manual_seed(cfg.seed)
    venv = make_eval_env(cfg)
    reward = make_reward(cfg, venv)
    venv.close()
    if reward.standardize:
        standardize_on(reward, segments.values())
    make_trainer(cfg, reward).fit(first, segments, epochs=cfg.reward.initial_epochs, min_steps=cfg.reward.min_steps)
    rng = np.random.default_rng(cfg.seed)
    normalize_on(reward, list(segments.values()), center=reward_center(cfg), std=cfg.reward.std, rng=rng)
    return reward.eval()


def load_reward(run: RunDir) -> RewardEnsemble:
    """A preference run's reward ensemble as of its last checkpoint, normalized as its agent saw it."""
    cfg = run.load_config()
    path = run.ckpt / "reward.pt"
    if cfg.reward_source != "learned" or not path.exists():
        raise FileNotFoundError(
            f"{run.path}: no learned reward model (checkpoint/reward.pt); give a run that learns from "
            "preferences and has trained a chunk"
        )
    return _reward_from(cfg, path)


def _reward_from(cfg: TrainConfig, path: Path) -> RewardEnsemble:
    venv = make_eval_env(cfg)
    reward = make_reward(cfg, venv)
    venv.close()
    reward.load_state_dict(torch.load(path, weights_only=False)["reward"])
    return reward.eval()


def freeze_reward(cfg: TrainConfig, run: RunDir) -> RewardEnsemble:
    """The reward of the run ``cfg.reward_from``, copied into ``run`` when it starts, so that the run resumes
    on the same reward even if the other one trains on or is deleted."""
    model, model_cfg = run.ckpt / "frozen_reward.pt", run.ckpt / "frozen_reward.toml"
    if not model.exists():
        source = RunDir(cfg.reward_from)
        source_cfg = source.load_config()
        if source_cfg.env.id != cfg.env.id:
            raise ConfigError(
                f"reward_from = {cfg.reward_from!r} learned its reward on {source_cfg.env.id}, this run acts on "
                f"{cfg.env.id}; name a run of the same environment"
            )
        load_reward(source)  # refuses a run without a learned reward
        run.ckpt.mkdir(parents=True, exist_ok=True)
        model_cfg.write_text(source.config_path.read_text())
        with atomic_write(model) as tmp:
            shutil.copyfile(source.ckpt / "reward.pt", tmp)
    return _reward_from(loads_config(model_cfg.read_text()), model)
