"""Measuring a policy: its true return on a fresh env, what a learned reward pays for its play and how well
that reward ranks it, and the training episodes' returns; the metrics the loop logs under ``eval/*`` and
``rollout/*``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from prefrl.config import TrainConfig
from prefrl.io import atomic_write
from prefrl.make import env_kind, make_eval_env
from prefrl.reward import RewardEnsemble
from prefrl.run import RunDir
from prefrl.segments import SegmentBuffer
from prefrl.wrappers import LearnedReward


def evaluate(
    agent: Any, cfg: TrainConfig, *, reward: RewardEnsemble | None = None, window: int = 0
) -> dict[str, float]:
    """Mean true return of ``cfg.eval_episodes`` episodes on a fresh env (the policy acts as ``cfg.eval_policy``).

    With ``reward``, also the return each episode earns under that learned reward (``eval/learned_return``):
    whether a reward model ranks a behaviour above another one, say a true-reward agent's above the agent
    trained on it, tells a reward that is wrong from one the agent failed to optimize.

    With ``reward`` and ``window`` > 0, the episodes are also cut into consecutive ``window``-step pieces, as a
    synthetic oracle would be shown them, and :func:`window_agreement` compares their learned and true returns
    (``eval/window_*``): how well the reward ranks what this agent does, not only the segments it was fit to.
    """
    if cfg.eval_episodes <= 0:
        return {}
    venv = make_eval_env(cfg)
    if reward is not None:
        venv = LearnedReward(venv, reward)  # the learned reward of each step; the true return stays in the monitor
    norm = agent.get_vec_normalize_env()
    if norm is not None:  # the policy sees observations as it saw them in training; statistics frozen
        venv = VecNormalize(venv, training=False, norm_reward=False)
        venv.obs_rms = copy.deepcopy(norm.obs_rms)
    running = np.zeros(venv.num_envs)
    learned: list[float] = []
    pieces: list[list[tuple[float, float]]] = [[] for _ in range(venv.num_envs)]  # (learned, true) of each step
    windows: list[tuple[float, float]] = []  # (learned, true) return of each whole window

    def add_learned(step: dict[str, Any], _globals: dict[str, Any]) -> None:
        i = step["i"]
        running[i] += step["reward"]
        if window > 0:
            pieces[i].append((float(step["reward"]), float(step["info"]["true_reward"])))
            if len(pieces[i]) == window:
                windows.append(tuple(np.sum(pieces[i], axis=0)))
                pieces[i].clear()
            if step["done"]:  # the agent's episode ended (on Atari, a lost life): a shorter rest is left out
                pieces[i].clear()
        if step["done"] and "episode" in step["info"]:  # a whole game ends (not a lost life), as counted below
            learned.append(float(running[i]))
            running[i] = 0.0

    returns, lengths = evaluate_policy(
        agent,
        venv,
        n_eval_episodes=cfg.eval_episodes,
        deterministic=eval_deterministic(cfg),
        return_episode_rewards=True,
        callback=add_learned if reward is not None else None,
    )
    venv.close()
    out = {
        "eval/true_return": float(np.mean(returns)),
        "eval/true_return_std": float(np.std(returns)),
        "eval/ep_len": float(np.mean(lengths)),
    }
    if reward is not None:
        out |= {"eval/learned_return": float(np.mean(learned)), "eval/learned_return_std": float(np.std(learned))}
    if reward is not None and window > 0:
        out |= window_agreement(np.array(windows).reshape(-1, 2))
    return out


def window_agreement(windows: np.ndarray, *, max_pairs: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """How a learned reward ranks pieces of play that a true reward tells apart.

    ``windows``: ``(n, 2)`` learned and true returns of n pieces of play. Returns ``eval/windows`` (n),
    ``eval/window_agreement`` (of the pairs whose true returns differ, the fraction whose learned returns differ
    the same way, a tie counting half: what a synthetic oracle would call the reward's accuracy on this play;
    NaN without such a pair), ``eval/window_corr`` (Pearson r of the two returns; NaN when either is constant).
    All pairs when there are at most ``max_pairs`` of them, else that many drawn at random.

    Examples:
        >>> import numpy as np
        >>> from prefrl.evaluation import window_agreement
        >>> w = np.array([[0.3, 0.0], [-0.3, -1.0], [0.2, 1.0]])  # a scored point is worth less than none
        >>> {k: round(v, 2) for k, v in window_agreement(w).items()}
        {'eval/windows': 3.0, 'eval/window_agreement': 0.67, 'eval/window_corr': 0.78}
    """
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    n = len(windows)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(n, size=(2, max_pairs))
    dl, dt = windows[i, 0] - windows[j, 0], windows[i, 1] - windows[j, 1]
    told = dt != 0
    agree = np.where(dl[told] == 0, 0.5, np.sign(dl[told]) == np.sign(dt[told]))
    constant = n < 2 or windows[:, 0].std() == 0 or windows[:, 1].std() == 0
    return {
        "eval/windows": float(n),
        "eval/window_agreement": float(agree.mean()) if told.any() else float("nan"),
        "eval/window_corr": float("nan") if constant else float(np.corrcoef(windows[:, 0], windows[:, 1])[0, 1]),
    }


def eval_deterministic(cfg: TrainConfig) -> bool:
    """Whether evaluation takes the policy's most likely action (``cfg.eval_policy``; ``auto``: not on Atari)."""
    if cfg.eval_policy == "auto":
        return env_kind(cfg.env) != "atari"
    return cfg.eval_policy == "deterministic"


def evaluate_due(
    agent: Any, cfg: TrainConfig, since: int, *, reward: RewardEnsemble | None = None, window: int = 0
) -> dict[str, float]:
    """The periodic evaluation, when the last chunk (from step ``since``) crossed a multiple of ``cfg.eval_every``;
    the end of the run has its own."""
    every, t = cfg.eval_every, agent.num_timesteps
    if every <= 0 or t >= cfg.total_timesteps or t // every == since // every:
        return {}
    return evaluate(agent, cfg, reward=reward, window=window)


def rollout_metrics(agent: Any, env: LearnedReward | None) -> dict[str, float]:
    """The agent's recent training episodes: true return and length (``rollout/*``), and with ``env`` the
    return its learned reward predicted."""
    eps = list(agent.ep_info_buffer or [])
    out = {
        "rollout/true_return": float(np.mean([e["r"] for e in eps])) if eps else math.nan,
        "rollout/ep_len": float(np.mean([e["l"] for e in eps])) if eps else math.nan,
    }
    if env is not None and env.predicted_returns:
        out["rollout/predicted_return"] = float(np.mean(env.predicted_returns))
    return out


def write_segment_scatter(run: RunDir, reward: RewardEnsemble, buffer: SegmentBuffer, n: int = 500) -> None:
    """``segments.csv``: the true and predicted return of the buffer's ``n`` most recent segments."""
    segs = buffer.recent(n)
    if not segs:
        return
    pred = reward.returns_of(segs).mean(axis=0)  # (B,)
    true = np.array([s.true_return for s in segs])
    with atomic_write(run.path / "segments.csv") as tmp:
        np.savetxt(
            tmp, np.stack([true, pred], axis=1), delimiter=",", header="true_return,predicted_return", comments=""
        )
