"""Cutting segments out of the rollouts the agent collects, keeping the recent ones, choosing queries.

``RecordSegments`` sits in the vectorized env stack (below ``LearnedReward``, above ``VecMonitor``) and
sees every step with its true reward. Each episode is cut into consecutive windows of ``T`` steps. A
window that a *termination* cuts short is padded with the absorbing state (see :mod:`prefrl.data`);
one that a *time limit* cuts short is dropped, because what would have followed is unknown. So
segments never cross episode boundaries, and the sampler still has material when most episodes are
shorter than a segment (a random CartPole policy falls after ~20 steps).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from prefrl.data import Query, Segment, load_segments, save_segments


class SegmentBuffer:
    """The most recent ``capacity`` segments; ids are unique within a run (and survive a resume).

    Examples:
        >>> import numpy as np
        >>> from prefrl.data import Segment
        >>> from prefrl.segments import SegmentBuffer
        >>> buffer = SegmentBuffer(capacity=2)
        >>> for _ in range(3):
        ...     sid = buffer.new_id()
        ...     buffer.add(Segment(sid, np.zeros((5, 1)), np.zeros(5), np.ones(5), 5, False, "Toy"))
        >>> [s.id for s in buffer], buffer.total_added, buffer.next_id  # the oldest one was dropped
        ([1, 2], 3, 3)
    """

    def __init__(self, capacity: int, *, next_id: int = 0) -> None:
        self.capacity = capacity
        self._segments: deque[Segment] = deque(maxlen=capacity)
        self.next_id = next_id
        self.total_added = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, segment: Segment) -> None:
        self._segments.append(segment)
        self.total_added += 1

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def __getitem__(self, i: int) -> Segment:
        return self._segments[i]

    def recent(self, n: int) -> list[Segment]:
        return list(self._segments)[-n:] if n > 0 else []

    @property
    def any_terminated(self) -> bool:
        return any(s.terminated for s in self._segments)

    def save(self, path: Path) -> None:
        save_segments(path, list(self._segments))

    def load(self, path: Path) -> None:
        for s in load_segments(path):
            self.add(s)


class RecordSegments(VecEnvWrapper):
    """Cuts ``length``-step segments from every env's episodes into ``buffer``; changes nothing it passes on.

    Args:
        venv: the vectorized env (a ``VecMonitor`` below keeps the logged return the true one).
        length: steps per segment ``T``.
        buffer: where finished segments go.
        env_id: recorded in each segment.
        state_fn: optional ``venv -> (n_envs, S)`` simulator state before each step, kept to re-render clips.

    Examples:
        CartPole pushed left at every step falls after 9 to 11 steps. The first episode fills one 10-step
        window and ends one step into the next; each later episode ends inside its first window:

        >>> import gymnasium as gym
        >>> import numpy as np
        >>> from stable_baselines3.common.vec_env import DummyVecEnv
        >>> from prefrl.segments import RecordSegments, SegmentBuffer
        >>> venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
        >>> _ = venv.seed(0)
        >>> buffer = SegmentBuffer(capacity=100)
        >>> record = RecordSegments(venv, length=10, buffer=buffer, env_id="CartPole-v1")
        >>> obs = record.reset()
        >>> for _ in range(30):
        ...     obs, rewards, dones, infos = record.step(np.zeros(1, dtype=np.int64))
        >>> [(s.length, s.terminated, s.true_return) for s in buffer]
        [(10, False, 10.0), (1, True, 1.0), (9, True, 9.0), (9, True, 9.0)]
    """

    def __init__(self, venv: VecEnv, *, length: int, buffer: SegmentBuffer, env_id: str, state_fn: Any = None) -> None:
        super().__init__(venv)
        self.length = length
        self.buffer = buffer
        self.env_id = env_id
        self.state_fn = state_fn
        self.next_episode = 0
        n, T = self.num_envs, length
        obs_space, act_space = self.observation_space, self.action_space
        self._obs_buf = np.zeros((n, T, *obs_space.shape), dtype=obs_space.dtype)  # (n_envs, T, *obs)
        self._act_buf = np.zeros((n, T, *act_space.shape), dtype=act_space.dtype)  # (n_envs, T, *act)
        self._rew_buf = np.zeros((n, T), dtype=np.float32)  # (n_envs, T)
        self._state_buf: np.ndarray | None = None
        self._envs = np.arange(n)
        self._pos = np.zeros(n, dtype=np.int64)  # step within the current window
        self._ep_step = np.zeros(n, dtype=np.int64)  # step within the current episode
        self._episode = np.zeros(n, dtype=np.int64)
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._obs = obs
        self._pos[:] = 0
        self._ep_step[:] = 0
        self._episode[:] = np.arange(self.next_episode, self.next_episode + self.num_envs)
        self.next_episode += self.num_envs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape((self.num_envs, *self.action_space.shape))
        if self.state_fn is not None:
            states = np.asarray(self.state_fn(self.venv))
            if self._state_buf is None:
                self._state_buf = np.zeros((self.num_envs, self.length, *states.shape[1:]), dtype=states.dtype)
            self._state_buf[self._envs, self._pos] = states
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        if self._obs is None:
            raise RuntimeError("RecordSegments: step() before reset()")
        envs, pos = self._envs, self._pos
        self._obs_buf[envs, pos] = self._obs
        self._act_buf[envs, pos] = self._actions
        self._rew_buf[envs, pos] = rewards
        pos += 1
        self._ep_step += 1
        full = pos == self.length
        if full.any():
            for i in np.flatnonzero(full):
                self._emit(i, self.length, terminated=bool(dones[i]) and not _truncated(infos[i]))
        if not dones.any():
            self._obs = obs
            return obs, rewards, dones, infos
        for i in np.flatnonzero(dones):
            if self._pos[i] > 0 and not _truncated(infos[i]):
                self._emit(i, int(self._pos[i]), terminated=True)
            self._pos[i] = 0
            self._ep_step[i] = 0
            self._episode[i] = self.next_episode
            self.next_episode += 1
        self._obs = obs
        return obs, rewards, dones, infos

    def _emit(self, i: int, n: int, *, terminated: bool) -> None:
        obs = self._obs_buf[i].copy()
        act = self._act_buf[i].copy()
        rew = self._rew_buf[i].copy()
        obs[n:] = 0  # absorbing padding
        act[n:] = 0
        rew[n:] = 0.0
        states = None
        if self._state_buf is not None:
            states = self._state_buf[i].copy()
            states[n:] = states[n - 1]
        self.buffer.add(
            Segment(
                id=self.buffer.new_id(),
                obs=obs,
                actions=act,
                true_rewards=rew,
                length=n,
                terminated=terminated,
                env_id=self.env_id,
                episode=int(self._episode[i]),
                start=int(self._ep_step[i]) - n,
                states=states,
            )
        )
        self._pos[i] = 0


def _truncated(info: dict) -> bool:
    return bool(info.get("TimeLimit.truncated", False))


def collect_random(record: RecordSegments, *, min_segments: int, max_steps: int, rng: np.random.Generator) -> int:
    """Step ``record`` with uniformly random actions until the buffer holds ``min_segments`` (or ``max_steps``
    vectorized steps ran). Returns env steps taken (summed over envs)."""
    space = record.action_space
    space.seed(int(rng.integers(2**31)))
    if record._obs is None:
        record.reset()
    steps = 0
    while len(record.buffer) < min_segments and steps < max_steps:
        actions = np.stack([space.sample() for _ in range(record.num_envs)])
        record.step(actions)
        steps += record.num_envs
    return steps


# ------------------------------------------------------------------------------------------------
# Query selection


def _candidate_tuples(
    segments: Sequence[Segment], m: int, k: int, ends_share: float, rng: np.random.Generator
) -> np.ndarray:
    """``(m, k)`` indices into ``segments``, distinct within each row, in random order.

    When some segments contain an episode's end (a termination), ``ends_share`` of the rows include one of
    them. In tasks that pay the same every step (CartPole, Acrobot, MountainCar) where an episode ends is all
    there is to learn, and a random policy may end only a handful of episodes in thousands of steps: uniform
    pairs would then be ties almost always. Whether an episode ended is known to the learner (the env says
    ``done``), not only to the oracle, so this uses no knowledge of the true reward.
    """
    n = len(segments)
    if k == 2:
        a = rng.integers(n, size=m)
        b = (a + rng.integers(1, n, size=m)) % n
        rows = np.stack([a, b], axis=1)
    else:
        rows = np.stack([rng.choice(n, size=k, replace=False) for _ in range(m)])
    ended = np.flatnonzero([s.terminated for s in segments])
    if 0 < len(ended) < n and ends_share > 0:
        m_end = round(m * ends_share)
        first = ended[rng.integers(len(ended), size=m_end)]
        clash = np.any(rows[:m_end, 1:] == first[:, None], axis=1)
        rows[:m_end, 0] = np.where(clash, rows[:m_end, 0], first)
        rows = rng.permuted(rows, axis=1)
    return rows


def select_queries(
    segments: Sequence[Segment],
    *,
    n: int,
    k: int = 2,
    sampler: str = "disagreement",
    candidates: int = 10,
    ends_share: float = 0.5,
    ensemble: Any = None,
    rng: np.random.Generator,
    tuples: np.ndarray | None = None,
) -> tuple[list[Query], dict[str, float]]:
    """Choose ``n`` queries of ``k`` segments: ``uniform``; ``disagreement`` (highest variance across ensemble
    members of the predicted preference, among ``candidates × n`` random tuples); ``entropy`` (most uncertain
    mean prediction). ``ends_share`` of the candidates include a segment where an episode ended (see
    :func:`_candidate_tuples`). ``tuples`` (``(m, k)`` indices into ``segments``) replaces the random
    candidates, e.g. responses to the same prompt in text tasks: uniform takes the first ``n`` of them.
    Returns the queries and metrics."""
    if n <= 0:
        return [], {}
    if len(segments) < k:
        raise RuntimeError(f"only {len(segments)} segments recorded; need at least {k} to ask a query")
    if tuples is not None:
        tuples = np.asarray(tuples, dtype=np.int64)
        if tuples.ndim != 2 or tuples.shape[1] != k or len(tuples) < n:
            raise ValueError(f"tuples must be an (m >= {n}, {k}) array of segment indices, got shape {tuples.shape}")
    if sampler == "uniform" or ensemble is None:
        rows = tuples[:n] if tuples is not None else _candidate_tuples(segments, n, k, ends_share, rng)
        return [Query(tuple(segments[j] for j in row), id=rng.bytes(16).hex()) for row in rows], {}
    rows = tuples if tuples is not None else _candidate_tuples(segments, n * candidates, k, ends_share, rng)  # (m, k)
    used = np.unique(rows)
    returns = ensemble.returns_of([segments[j] for j in used])  # (K, U) raw returns: the loss's logits
    col = np.searchsorted(used, rows)  # (m, k) columns into returns
    logits = returns[:, col]  # (K, m, k)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)  # (K, m, k) each member's P(item best)
    if sampler == "disagreement":
        score = probs.var(axis=0).sum(axis=-1)  # (m,)
    elif sampler == "entropy":
        mean = probs.mean(axis=0)
        score = -(mean * np.log(np.clip(mean, 1e-12, None))).sum(axis=-1)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; use uniform, disagreement or entropy")
    top = np.argsort(-score, kind="stable")[:n]
    # Ids from the run's generator: the validation split hashes them, so a seed fixes the whole run.
    queries = [Query(tuple(segments[j] for j in rows[i]), id=rng.bytes(16).hex()) for i in top]
    return queries, {"labels/score_chosen": float(score[top].mean()), "labels/score_pool": float(score.mean())}


class LabelSchedule:
    """How many labels are due by agent step ``T``: ``initial`` up front, the rest at a rate ∝ t0/(T + t0).

    Integrating that rate, the labels asked after the start by step T are ∝ log(1 + T/t0), scaled so the
    whole budget is used by ``total_timesteps``.

    Examples:
        >>> from prefrl.segments import LabelSchedule
        >>> schedule = LabelSchedule(total=100, initial_fraction=0.25, t0=0, total_timesteps=10_000)
        >>> [schedule.due(t) for t in (0, 2_500, 5_000, 10_000)]  # t0 = 0 means total_timesteps / 4
        [25, 57, 76, 100]
    """

    def __init__(self, *, total: int, initial_fraction: float, t0: float, total_timesteps: int) -> None:
        self.total = total
        self.initial = round(total * initial_fraction)
        self.t0 = t0 if t0 > 0 else total_timesteps / 4
        self.total_timesteps = total_timesteps

    def due(self, timesteps: int) -> int:
        frac = math.log1p(max(timesteps, 0) / self.t0) / math.log1p(self.total_timesteps / self.t0)
        return min(self.total, self.initial + round((self.total - self.initial) * min(frac, 1.0)))
