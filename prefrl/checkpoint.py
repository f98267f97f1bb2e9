"""A run's checkpoint: everything a killed run needs to resume where it stopped, in ``RUN/checkpoint/``.

``agent.zip`` (the SB3 agent), ``replay.pkl`` (an off-policy agent's replay buffer, SB3's format),
``normalize.npz`` (its ``VecNormalize`` statistics), ``reward.pt`` (reward ensemble, its trainer and the torch
random state), ``buffer.npz`` (the segment buffer) and ``state.json`` (a :class:`TrainState`), written last:
a checkpoint is only used once its ``state.json`` is there. The labels are not in it: they are committed to
``labels.sqlite`` as they are answered, and survive a damaged checkpoint.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import configure

from prefrl.agents import PROGRESS_HOOK, is_off_policy
from prefrl.config import CheckpointError, TrainConfig
from prefrl.io import atomic_write
from prefrl.reward import RewardEnsemble, RewardTrainer
from prefrl.run import RunDir, restore_rng, rng_state
from prefrl.segments import RecordSegments, SegmentBuffer

RMS_STATS = ("mean", "var", "count")  # the arrays of each of VecNormalize's running statistics


@dataclass
class TrainState:
    """Where a run stands, saved as ``state.json``; a run on a fixed reward has only ``timesteps`` and ``wall_s``.

    Examples:
        >>> from prefrl.checkpoint import TrainState
        >>> state = TrainState(timesteps=2048, wall_s=12.5)
        >>> state.to_json()
        {'timesteps': 2048, 'wall_s': 12.5}
        >>> TrainState.from_json(state.to_json() | {"pretrained": True}).pretrained
        True
    """

    timesteps: int = 0
    random_steps: int | None = None  # steps of the random policy that gave the first segments to label
    wall_s: float = 0.0
    pretrained: bool | None = None  # the first labels are in and the reward fit to them
    rng: dict[str, Any] | None = None  # the loop's numpy generator (bit_generator.state)
    next_segment_id: int | None = None
    next_episode: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


@dataclass
class Pieces:
    """The parts of a preference run that a checkpoint holds (the labels are in their own store)."""

    agent: Any
    reward: RewardEnsemble
    trainer: RewardTrainer
    buffer: SegmentBuffer
    record: RecordSegments


def save(run: RunDir, pieces: Pieces, rng: np.random.Generator, state: TrainState, *, wall_s: float) -> None:
    """Everything needed to resume; ``state.json`` is written last, so a half-written checkpoint is never used."""
    save_agent(pieces.agent, run)
    with atomic_write(run.ckpt / "reward.pt") as tmp:
        saved = {"reward": pieces.reward.state_dict(), "trainer": pieces.trainer.state_dict()}
        torch.save(saved | {"torch_rng": torch.get_rng_state()}, tmp)
    pieces.buffer.save(run.ckpt / "buffer.npz")
    state = dataclasses.replace(
        state,
        timesteps=pieces.agent.num_timesteps,
        wall_s=wall_s,
        rng=rng_state(rng),
        next_segment_id=pieces.buffer.next_id,
        next_episode=pieces.record.next_episode,
    )
    run.write_state(state.to_json())


def restore(run: RunDir, cfg: TrainConfig, pieces: Pieces) -> tuple[TrainState, np.random.Generator]:
    """Load ``run``'s checkpoint into ``pieces`` (its agent replaced by the saved one); returns where the run
    stood and the loop's random generator as it was."""
    state = read_checkpoint(run, "state.json", lambda: TrainState.from_json(run.read_state()))
    saved = read_checkpoint(run, "reward.pt", lambda: torch.load(run.ckpt / "reward.pt", weights_only=False))
    pieces.reward.load_state_dict(saved["reward"])
    pieces.trainer.load_state_dict(saved["trainer"])
    torch.set_rng_state(saved["torch_rng"])
    read_checkpoint(run, "buffer.npz", lambda: pieces.buffer.load(run.ckpt / "buffer.npz"))
    pieces.buffer.next_id = state.next_segment_id
    pieces.record.next_episode = state.next_episode
    pieces.agent = _read_agent(run, cfg, pieces.agent)
    return state, restore_rng(state.rng)


def save_policy(run: RunDir, agent: Any, state: TrainState) -> None:
    """The checkpoint of a run on a fixed reward: its agent, then ``state.json``."""
    save_agent(agent, run)
    run.write_state(state.to_json())


def restore_policy(run: RunDir, cfg: TrainConfig, agent: Any) -> tuple[Any, TrainState]:
    """The agent of a fixed-reward run's checkpoint (on ``agent``'s env), and where the run stood."""
    state = read_checkpoint(run, "state.json", lambda: TrainState.from_json(run.read_state()))
    return _read_agent(run, cfg, agent), state


def _read_agent(run: RunDir, cfg: TrainConfig, agent: Any) -> Any:
    return read_checkpoint(run, "agent.zip, normalize.npz or replay.pkl", lambda: load_agent(agent, run, cfg))


def read_checkpoint(run: RunDir, name: str, read: Callable[[], Any]) -> Any:
    """``read()``, with a damaged checkpoint file (cut short by a full disk or a copy that stopped) refused in one
    line that says how to go on. The labels live apart from the checkpoint, in ``labels.sqlite``, and are kept."""
    try:
        return read()
    except (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"{run.ckpt}: cannot resume, {name} is damaged ({type(e).__name__}: {e}). The labels in "
            f"{run.labels_path.name} are intact: move {run.ckpt.name}/ aside and run `prefrl train --resume "
            f"{run.path}` again to start the run over from them"
        ) from None


def save_agent(agent: Any, run: RunDir) -> None:
    """``agent.zip``, and beside it an off-policy agent's replay buffer and the normalization statistics."""
    with atomic_write(run.ckpt / "agent.zip", suffix=".tmp.zip") as tmp:  # SB3 appends .zip to a path without it
        agent.save(tmp, exclude=[PROGRESS_HOOK])
    if is_off_policy(agent):  # SB3's own format for its replay buffer (a checkpoint, not a record to keep)
        with atomic_write(run.ckpt / "replay.pkl", suffix=".tmp.pkl") as tmp:
            agent.save_replay_buffer(tmp)
    norm = agent.get_vec_normalize_env()
    if norm is not None:  # running statistics as plain arrays, beside the agent
        stats = {f"{name}_{k}": getattr(getattr(norm, name), k) for name in ("obs_rms", "ret_rms") for k in RMS_STATS}
        with atomic_write(run.ckpt / "normalize.npz", suffix=".tmp.npz") as tmp:  # np.savez appends .npz
            np.savez(tmp, **stats)


def load_agent(agent: Any, run: RunDir, cfg: TrainConfig) -> Any:
    """The agent of ``run``'s checkpoint on ``agent``'s env, with its normalization statistics and replay buffer."""
    loaded = type(agent).load(run.ckpt / "agent.zip", env=agent.get_env(), device=cfg.agent.device)
    loaded.set_logger(configure(None, []))
    restore_normalization(loaded, run)
    if is_off_policy(loaded):
        loaded.load_replay_buffer(run.ckpt / "replay.pkl")
    return loaded


def restore_normalization(agent: Any, run: RunDir) -> None:
    """Put the saved observation and return statistics back into the agent's ``VecNormalize``, if it has one."""
    norm = agent.get_vec_normalize_env()
    if norm is None:
        return
    with np.load(run.ckpt / "normalize.npz") as stats:
        for name in ("obs_rms", "ret_rms"):
            rms = getattr(norm, name)
            rms.mean, rms.var = stats[f"{name}_mean"], stats[f"{name}_var"]
            rms.count = float(stats[f"{name}_count"])
