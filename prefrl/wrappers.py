"""The learned reward, put where the agent looks for its reward.

``LearnedReward`` replaces the reward of a vectorized env with the reward ensemble's normalized mean,
one batched forward per step, and keeps the env's own reward in ``info["true_reward"]``. Stack it above
``VecMonitor`` so SB3's ``ep_rew_mean`` stays the true return; the predicted episode return goes to
``info["predicted_return"]`` at each episode end. ``LearnedRewardEnv`` does the same for one
``gymnasium.Env``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper


class LearnedReward(VecEnvWrapper):
    """``reward`` ← the ensemble's mean normalized reward for the step's (observation, action); the env's own
    reward goes to ``info["true_reward"]``. ``ensemble`` needs ``step_rewards(obs, actions) -> (K, n_envs)``.

    Examples:
        >>> import gymnasium as gym
        >>> import numpy as np
        >>> from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor
        >>> from prefrl.reward import RewardEnsemble
        >>> from prefrl.wrappers import LearnedReward
        >>> venv = VecMonitor(DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2))  # the true return is logged
        >>> ensemble = RewardEnsemble(venv.observation_space, venv.action_space, members=3, seed=0)
        >>> env = LearnedReward(venv, ensemble)
        >>> first = env.reset()
        >>> actions = np.array([0, 1])
        >>> obs, rewards, dones, infos = env.step(actions)
        >>> [info["true_reward"] for info in infos], rewards.shape, rewards.dtype
        ([1.0, 1.0], (2,), dtype('float32'))
        >>> bool(np.allclose(rewards, ensemble.predict(first, actions)[0]))  # mean over members
        True
    """

    def __init__(self, venv: VecEnv, ensemble: Any) -> None:
        super().__init__(venv)
        self.ensemble = ensemble
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._ep_pred = np.zeros(self.num_envs, dtype=np.float64)
        self.predicted_returns: deque[float] = deque(maxlen=100)

    def reset(self) -> Any:
        self._obs = self.venv.reset()
        self._ep_pred[:] = 0.0
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        if self._obs is None:
            raise RuntimeError("LearnedReward: step() before reset()")
        rewards = self.ensemble.step_rewards(self._obs, self._actions).mean(axis=0)  # (K, n_envs) -> (n_envs,)
        if not np.isfinite(rewards.sum()):
            raise FloatingPointError(
                "learned reward is NaN/inf; the reward model diverged. Lower reward.lr or check observations for NaN"
            )
        self._ep_pred += rewards
        for info, true_reward in zip(infos, true_rewards.tolist(), strict=True):
            info["true_reward"] = true_reward
        for i in np.flatnonzero(dones) if dones.any() else ():
            infos[i]["predicted_return"] = float(self._ep_pred[i])
            self.predicted_returns.append(float(self._ep_pred[i]))
            self._ep_pred[i] = 0.0
        self._obs = obs
        return obs, rewards.astype(np.float32), dones, infos


class LearnedRewardEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Single-env version: ``reward`` ← ensemble mean, ``info["true_reward"]`` ← the env's reward."""

    def __init__(self, env: gym.Env, ensemble: Any) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, ensemble=ensemble)
        gym.Wrapper.__init__(self, env)
        self.ensemble = ensemble
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        reward = self.ensemble.step_rewards(np.asarray(self._obs)[None], np.asarray(action)[None]).mean()
        info = dict(info, true_reward=float(true_reward))
        self._obs = obs
        return obs, float(reward), terminated, truncated, info
