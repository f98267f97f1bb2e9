import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from prefrl.reward import RewardEnsemble
from prefrl.segments import RecordSegments, SegmentBuffer
from prefrl.wrappers import LearnedReward, LearnedRewardEnv


class ImageEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (4, 84, 84), dtype=np.uint8)
    action_space = gym.spaces.Discrete(6)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), 2.0, self.t >= 9, False, {}


@pytest.mark.parametrize("make", [lambda: gym.make("CartPole-v1"), lambda: gym.make("Pendulum-v1"), ImageEnv])
def test_learned_reward_replaces_reward_and_keeps_true_one(make):
    n = 3
    monitor = VecMonitor(DummyVecEnv([make] * n))
    record = RecordSegments(monitor, length=5, buffer=SegmentBuffer(100), env_id="x")
    ensemble = RewardEnsemble(record.observation_space, record.action_space, members=3, seed=0)
    venv = LearnedReward(record, ensemble)
    obs = venv.reset()
    episodes = []
    for _ in range(40):
        actions = np.stack([venv.action_space.sample() for _ in range(n)])
        expected = ensemble.step_rewards(obs, actions).mean(axis=0)
        obs, rewards, _dones, infos = venv.step(actions)
        assert rewards.shape == (n,) and rewards.dtype == np.float32
        np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)
        assert all("true_reward" in info for info in infos)
        episodes += [info for info in infos if "episode" in info]
    if episodes:  # VecMonitor below: the logged episode return is the true one
        for info in episodes:
            assert "predicted_return" in info
            assert info["episode"]["r"] != pytest.approx(info["predicted_return"])


def test_single_env_wrapper_passes_env_checker():
    env = gym.make("Pendulum-v1")
    ensemble = RewardEnsemble(env.observation_space, env.action_space, members=2, seed=0)
    wrapped = LearnedRewardEnv(env, ensemble)
    check_env(wrapped, skip_render_check=True)
    wrapped.reset(seed=0)
    _, r, _, _, info = wrapped.step(np.array([0.5], dtype=np.float32))
    assert isinstance(r, float) and info["true_reward"] <= 0.0
