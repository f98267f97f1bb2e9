"""Off-policy agents learn from a replay buffer that always holds the current reward (PEBBLE's relabeling)."""

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv

import prefrl.checkpoint as checkpoint
import prefrl.loop as loop
from prefrl.agents import critic_metrics, lambda_returns, relabel_replay, replay_steps, rollout_array
from prefrl.cli import main
from prefrl.config import load_config
from prefrl.make import make_agent
from prefrl.reward.load import load_reward
from prefrl.run import RunDir

SAC_PENDULUM = [
    "env.id='Pendulum-v1'",
    "env.n_envs=1",
    "agent.algo='SAC'",
    "agent.kwargs={learning_rate=1e-3, learning_starts=500, batch_size=128, policy_kwargs={net_arch=[64, 64]}}",
    "baseline=false",
]


class ObsPlusAction:
    """A stand-in reward: r = obs[0] + 10 * action[0], one member."""

    def step_rewards(self, obs, actions):
        return (obs[:, 0] + 10 * np.asarray(actions, dtype=np.float64)[:, 0])[None].astype(np.float32)  # (1, N)


def test_relabeling_pays_every_stored_transition_the_reward_of_the_action_the_env_received():
    import gymnasium as gym

    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)
    agent = SAC("MlpPolicy", venv, learning_starts=300, seed=0, policy_kwargs={"net_arch": [8]})
    agent.learn(300)  # random actions in [-2, 2], stored rescaled to [-1, 1]
    obs, actions = replay_steps(agent)
    assert len(obs) == 300 and np.abs(actions).max() > 1.0  # the env's scale, not the buffer's
    metrics = relabel_replay(agent, ObsPlusAction())
    buf = agent.replay_buffer
    stored = buf.rewards[: buf.pos]  # (150, 2)
    want = buf.observations[: buf.pos, :, 0] + 10 * 2.0 * buf.actions[: buf.pos, :, 0]
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-4)
    assert metrics["agent/relabeled"] == 300 and metrics["agent/relabel_change"] > 1.0


@pytest.mark.parametrize("algo", ["SAC", "TQC"])  # TQC: sb3-contrib's off-policy agent, the same buffer
def test_after_every_refit_the_replay_buffer_holds_the_current_reward(tmp_path, algo):
    cfg = load_config(
        None,
        [
            *SAC_PENDULUM,
            f"agent.algo='{algo}'",
            "total_timesteps=1500",
            "chunk_steps=500",
            "labels.total=20",
            "eval_episodes=1",
        ],
    )
    run = RunDir(tmp_path / "run")
    loop.train(cfg, run, progress=False)
    reward = load_reward(run)  # as of the last checkpoint, after the last refit
    agent = checkpoint.load_agent(make_agent(cfg.agent, _pendulum(cfg), seed=0), run, cfg)
    obs, actions = replay_steps(agent)
    assert len(obs) == 1500
    stored = agent.replay_buffer.rewards[:1500].reshape(-1)  # one env: position-major is time order
    np.testing.assert_allclose(stored, reward.step_rewards(obs, actions).mean(axis=0), rtol=1e-4, atol=1e-5)
    rows = run.metrics().rows
    assert all(float(r["agent/relabeled"]) > 0 for r in rows[1:-1])  # every refit during RL relabeled


def test_a_short_sac_preference_run_beats_a_random_policy(tmp_path):
    cfg = load_config(
        None,
        [*SAC_PENDULUM, "total_timesteps=10000", "chunk_steps=1000", "labels.total=60", "eval_episodes=10"],
    )
    result = loop.train(cfg, RunDir(tmp_path / "run"), progress=False)
    random_return = -1230.0  # a uniformly random Pendulum policy, mean over many episodes
    assert result.true_return > random_return + 600


def test_a_killed_sac_run_resumes_with_its_replay_buffer(tmp_path, monkeypatch, kill_after):
    cfg = load_config(
        None, [*SAC_PENDULUM, "total_timesteps=1500", "chunk_steps=500", "labels.total=20", "eval_episodes=1"]
    )
    run = RunDir(tmp_path / "run")
    real_checkpoint = kill_after(checkpoint, "save", 3)  # pretraining, then two chunks of 500 steps
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    seen = {}
    real_load = checkpoint.load_agent

    def load_and_look(*args, **kwargs):
        agent = real_load(*args, **kwargs)
        seen["stored"] = agent.replay_buffer.pos
        return agent

    monkeypatch.setattr(checkpoint, "save", real_checkpoint)
    monkeypatch.setattr(checkpoint, "load_agent", load_and_look)
    loop.train(run.load_config(), run, progress=False)
    assert seen["stored"] == 1000


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["agent.algo=SAC"], "SAC needs continuous (Box) actions"),
        (["env.id=Pendulum-v1", "agent.algo=DQN"], "DQN needs discrete actions"),
    ],
)
def test_an_agent_that_cannot_act_in_the_env_is_refused(tmp_path, capsys, sets, message):
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_lambda_returns_are_the_targets_sb3_fits_its_critic_to():
    import gymnasium as gym
    from stable_baselines3 import PPO

    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)
    agent = PPO("MlpPolicy", venv, n_steps=300, batch_size=100, n_epochs=1, gamma=0.9, seed=0)
    agent.learn(600)  # the buffer's arrays are now flattened for training, env-major
    buf = agent.rollout_buffer
    values = rollout_array(buf, "values").reshape(300, 2)
    got = lambda_returns(buf.rewards, values, buf.episode_starts, gamma=0.9, lam=agent.gae_lambda)
    want = rollout_array(buf, "returns").reshape(300, 2)
    # equal but near the rollout's end, where SB3 bootstraps from the value after the rollout (not kept)
    np.testing.assert_allclose(got[:250], want[:250], rtol=1e-4, atol=1e-3)
    assert not np.allclose(got[:250, 0], want[:250, 1], atol=1e-3)  # each env its own returns


def test_the_critic_error_after_a_refit_grows_when_the_reward_moves():
    import gymnasium as gym
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    agent = PPO("MlpPolicy", venv, n_steps=512, batch_size=64, n_epochs=10, gamma=0.9, seed=0)
    agent.learn(512 * 6)
    paid = agent.rollout_buffer.rewards.copy()
    same = critic_metrics(agent, paid, paid)
    assert same["agent/critic_error"] == same["agent/critic_error_refit"] > 0
    moved = critic_metrics(agent, paid, 10 + 5 * paid)
    assert moved["agent/critic_error_refit"] > 10 * moved["agent/critic_error"]


def _pendulum(cfg):
    from prefrl.make import make_vec_env

    return make_vec_env(cfg.env, seed=0)
