"""What the loop needs of an SB3 agent beyond ``learn``, when its reward is refit under it.

Off-policy agents (SAC, TD3, TQC, DQN) keep every transition in a replay buffer with the reward it was paid
when it was collected. After a refit those rewards are stale: :func:`relabel_replay` pays every stored
transition again with the current reward (PEBBLE, Lee et al. 2021), so the critic learns from one reward, not
from a mix of all the rewards the run has had. On-policy agents (PPO, A2C) keep only their last rollout;
:func:`critic_metrics` measures how far a refit moved the returns their critic was fit to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm


def is_off_policy(agent: Any) -> bool:
    return isinstance(agent, OffPolicyAlgorithm)


def replay_steps(agent: Any) -> tuple[np.ndarray, np.ndarray]:
    """The stored transitions of an off-policy ``agent``'s replay buffer, ``(obs, actions)``, position-major as
    ``replay_buffer.rewards[:N // n_envs]`` flattens: ``obs`` ``(N, *obs_shape)`` as the env emitted them (SB3
    stores the raw observation under ``VecNormalize``), ``actions`` ``(N, ...)`` as the env received them."""
    buf = agent.replay_buffer
    size = buf.buffer_size if buf.full else buf.pos
    obs = buf.observations[:size].reshape(size * buf.n_envs, *buf.obs_shape)  # (N, *obs_shape)
    actions = buf.actions[:size].reshape(size * buf.n_envs, *buf.actions.shape[2:])  # (N, action_dim)
    return obs, env_actions(agent, actions, scaled=True)


def env_actions(agent: Any, actions: np.ndarray, *, scaled: bool) -> np.ndarray:
    """Actions ``(N, action_dim)`` as an SB3 agent stored them, as the env received them: Box actions scaled back
    from [-1, 1] (off-policy agents store them ``scaled``) or clipped to the space (on-policy agents store what
    the policy drew); discrete ones as integers ``(N,)``."""
    space = agent.action_space
    if isinstance(space, spaces.Box):
        return agent.policy.unscale_action(actions) if scaled else np.clip(actions, space.low, space.high)
    if isinstance(space, spaces.Discrete):
        return actions.reshape(-1).astype(np.int64)
    return actions


def relabel_replay(agent: Any, reward: Any) -> dict[str, float]:
    """Every transition in ``agent``'s replay buffer gets the current reward (the ensemble's normalized mean,
    as :class:`~prefrl.wrappers.LearnedReward` pays new steps). Returns how many, and how far they moved."""
    obs, actions = replay_steps(agent)
    if len(obs) == 0:
        return {}
    stored = agent.replay_buffer.rewards[: len(obs) // agent.replay_buffer.n_envs]  # (size, n_envs), a view
    new = reward.step_rewards(obs, actions).mean(axis=0).reshape(stored.shape)  # (K, N) -> (size, n_envs)
    change = float(np.sqrt(np.mean((new - stored) ** 2)))
    stored[:] = new
    return {"agent/relabeled": float(len(obs)), "agent/relabel_change": change}


def keep_in_step(agent: Any, reward: Any, *, relabel: bool = True) -> Callable[[], dict[str, float]]:
    """Call before a refit of ``reward``; call what it returns after the refit. Off-policy: the replay buffer is
    relabeled with the refit reward (unless not ``relabel``, an ablation). On-policy: how far the refit moved the
    returns of the last rollout away from the critic (:func:`critic_metrics`)."""
    if is_off_policy(agent):
        return (lambda: relabel_replay(agent, reward)) if relabel else dict
    before = rollout_rewards(agent, reward)
    if before is None:
        return dict
    return lambda: critic_metrics(agent, before, rollout_rewards(agent, reward))


def rollout_rewards(agent: Any, reward: Any) -> np.ndarray | None:
    """``reward``'s pay ``(n_steps, n_envs)`` for the steps of an on-policy ``agent``'s last rollout (None before
    the first rollout, or when the agent sees normalized observations, which the reward model does not)."""
    buf = getattr(agent, "rollout_buffer", None)
    if buf is None or not buf.full or agent.get_vec_normalize_env() is not None:
        return None
    n, e = buf.rewards.shape
    obs = rollout_array(buf, "observations").reshape(n * e, *buf.obs_shape)  # (n*e, *obs_shape)
    actions = env_actions(agent, rollout_array(buf, "actions").reshape(n * e, -1), scaled=False)
    return reward.step_rewards(obs, actions).mean(axis=0).reshape(n, e)


def rollout_array(buf: Any, name: str) -> np.ndarray:
    """``buf.<name>`` of an SB3 rollout buffer as ``(n_steps, n_envs, ...)``. Training flattens the buffer's
    arrays in place to ``(n_envs * n_steps, ...)``, env-major; this undoes that."""
    x = getattr(buf, name)
    if buf.generator_ready:
        x = x.reshape(buf.n_envs, buf.buffer_size, *x.shape[1:]).swapaxes(0, 1)
    return x


def critic_metrics(agent: Any, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """How well an on-policy ``agent``'s critic (as it is after the chunk's update) fits the returns of its last
    rollout when its steps are paid ``before`` (``agent/critic_error``) and ``after`` (``agent/critic_error_refit``)
    a refit, both ``(n_steps, n_envs)``: the mean squared error over the variance of the returns before the refit.
    A refit that moves the reward far leaves the critic far from the returns the next advantages are computed with.
    """
    import torch

    buf = agent.rollout_buffer
    obs = torch.as_tensor(rollout_array(buf, "observations").reshape(-1, *buf.obs_shape), device=agent.device)
    with torch.no_grad():
        values = agent.policy.predict_values(obs).cpu().numpy().reshape(buf.rewards.shape)  # (n_steps, n_envs)
    collected = rollout_array(buf, "values").reshape(buf.rewards.shape)  # the critic's values when it acted
    returns = {
        key: lambda_returns(rewards, collected, buf.episode_starts, gamma=agent.gamma, lam=agent.gae_lambda)
        for key, rewards in (("agent/critic_error", before), ("agent/critic_error_refit", after))
    }
    scale = max(float(np.var(returns["agent/critic_error"])), 1e-12)
    return {key: float(np.mean((r - values) ** 2) / scale) for key, r in returns.items()}


def lambda_returns(
    rewards: np.ndarray, values: np.ndarray, episode_starts: np.ndarray, *, gamma: float, lam: float
) -> np.ndarray:
    """TD(λ) returns ``(n_steps, n_envs)`` of a rollout, as SB3 computes its critic's targets, with the last
    step bootstrapping from its own value (the value after the rollout is not kept)."""
    n = len(rewards)
    returns = np.zeros_like(values)
    gae = np.zeros(values.shape[1:])
    for t in reversed(range(n)):
        next_value = values[t] if t == n - 1 else values[t + 1]
        non_terminal = 1.0 if t == n - 1 else 1.0 - episode_starts[t + 1]
        delta = rewards[t] + gamma * next_value * non_terminal - values[t]
        gae = delta + gamma * lam * non_terminal * gae
        returns[t] = gae + values[t]
    return returns


# Checked against stable-baselines3 2.9.2, which has no public way to set schedule progress: its
# ``learn`` computes ``_current_progress_remaining`` from the steps of that call alone, and every schedule
# (learning rate, PPO clip range, DQN exploration) reads that attribute. Wrapping each schedule instead would
# miss the schedules of other algorithms and be pickled into the saved agent.
PROGRESS_HOOK = "_update_current_progress_remaining"


def pin_progress(agent: Any, total_timesteps: int) -> None:
    """SB3 computes schedule progress per ``learn`` call; make it span the whole run instead, so a linear
    learning-rate schedule decays over ``total_timesteps`` even though we learn in chunks. The replaced method is
    :data:`PROGRESS_HOOK`, which a saved agent leaves out."""

    def update(num_timesteps: int, _chunk_total: int) -> None:
        agent._current_progress_remaining = max(0.0, 1.0 - num_timesteps / total_timesteps)

    setattr(agent, PROGRESS_HOOK, update)
