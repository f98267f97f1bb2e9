import dataclasses as dc
import fcntl

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

import prefrl.checkpoint as checkpoint
import prefrl.loop as loop
from prefrl.cli import main
from prefrl.config import ConfigError, load_config
from prefrl.data import ComparisonStore, DataError
from prefrl.evaluation import eval_deterministic, evaluate, window_agreement
from prefrl.make import ends_share, make_agent, make_vec_env, reward_center
from prefrl.reward.load import freeze_reward, load_reward, refit_reward
from prefrl.run import RunDir

TINY = [
    "total_timesteps=6144",
    "labels.total=24",
    "eval_episodes=3",
    "baseline=false",
    "chunk_steps=1024",
    "segments.length=20",
    "reward.initial_epochs=20",
]


def test_tiny_cartpole_run_beats_a_random_policy(tmp_path):
    cfg = load_config(None, ["total_timesteps=40000", "labels.total=60", "baseline=false", "eval_episodes=10"])
    run = RunDir(tmp_path / "run")
    result = loop.train(cfg, run, progress=False)
    random_return = 22.0  # a uniformly random CartPole policy survives ~22 steps
    assert result.true_return > 3 * random_return
    assert result.labels == 60
    rows = run.metrics().rows
    assert float(rows[-2]["reward/val_acc"]) > 0.6  # the last row is the final evaluation
    # the evaluation also scores its episodes with the reward, whole and in segment-length pieces
    assert np.isfinite(float(rows[-1]["eval/learned_return"]))
    assert float(rows[-1]["eval/windows"]) >= 10 * (result.true_return / 50 - 1)  # 50-step pieces, 10 episodes
    assert (run.path / "segments.csv").exists() and (run.ckpt / "state.json").exists()


def test_killed_run_resumes_with_every_label_it_paid_for(tmp_path, monkeypatch, kill_after):
    cfg = load_config(None, TINY)
    run = RunDir(tmp_path / "run")
    real_checkpoint = kill_after(checkpoint, "save", 3)  # killed right after the third checkpoint
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    before = {c.query_id: c for c in ComparisonStore(run.labels_path).comparisons()}
    assert 0 < len(before) < 24
    stopped_at = run.read_state()["timesteps"]
    assert 0 < stopped_at < cfg.total_timesteps

    monkeypatch.setattr(checkpoint, "save", real_checkpoint)
    result = loop.train(run.load_config(), run, progress=False)
    after = {c.query_id: c for c in ComparisonStore(run.labels_path).comparisons()}
    assert set(before) <= set(after)
    assert all(after[q] == before[q] for q in before)
    assert len(after) == 24 and result.labels == 24
    steps = [int(r["timesteps"]) for r in run.metrics().rows[:-1]]
    assert steps == sorted(set(steps)) and steps[-1] >= cfg.total_timesteps


def test_true_reward_baseline_and_cli_plots(tmp_path, capsys):
    sets = [arg for s in [*TINY, "baseline=true"] for arg in ("--set", s)]
    rc = main(["train", "--run-dir", str(tmp_path / "q"), "--no-progress", *sets])
    assert rc == 0
    assert (tmp_path / "q" / "baseline" / "metrics.csv").exists()
    for name in ("comparison.png", "returns.png", "labels.png", "segments.png"):
        assert (tmp_path / "q" / "plots" / name).stat().st_size > 5000
    assert main(["eval", str(tmp_path / "q"), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "true return" in out and f"learned return under the reward of {tmp_path / 'q'}: " in out  # its own
    # CartPole pays 1 every step: whole 20-step pieces of play (the segment length) all have a true return of 20
    assert "20-step pieces of this play: no two of them have different true returns" in out
    assert main(["eval", str(tmp_path / "q"), "--window", "0"]) == 2
    assert "--window 0: give a piece length of at least 1 step" in capsys.readouterr().err
    # the true-reward agent scored by the preference run's reward, as `evaluate` scores it
    assert main(["eval", str(tmp_path / "q" / "baseline"), "--episodes", "2", "--reward-of", str(tmp_path / "q")]) == 0
    base = RunDir(tmp_path / "q" / "baseline")
    agent = PPO.load(base.ckpt / "agent.zip")
    want = evaluate(agent, dc.replace(base.load_config(), eval_episodes=2), reward=load_reward(RunDir(tmp_path / "q")))
    assert (
        f"learned return under the reward of {tmp_path / 'q'}: {want['eval/learned_return']:.2f} ± "
        in capsys.readouterr().out
    )
    assert main(["eval", str(tmp_path / "q"), "--reward-of", str(base.path)]) == 2  # a true-reward run has no model
    assert "no learned reward model (checkpoint/reward.pt)" in capsys.readouterr().err

    # The reward as it stood after the first 8 labels, fit afresh to them: it ranks those 8 as they were answered.
    pref = RunDir(tmp_path / "q")
    early = refit_reward(pref, 8)
    with ComparisonStore(pref.labels_path) as store:
        first = [c for c in store.comparisons()[:8] if c.label in (0, 1)]
        segs = store.segments(i for c in first for i in c.segment_ids)

    def score(i: int) -> float:
        s = segs[i]
        return float(early.step_rewards(s.obs[: s.length], s.actions[: s.length]).mean(0).sum())

    assert len(first) >= 6
    right = [score(c.segment_ids[c.label]) > score(c.segment_ids[1 - c.label]) for c in first]
    assert sum(right) >= len(first) - 1
    assert main(["eval", str(base.path), "--episodes", "2", "--reward-of", str(pref.path), "--labels", "8"]) == 0
    assert f"learned return under the reward of {pref.path} refit to its first 8 labels: " in capsys.readouterr().out
    assert main(["eval", str(base.path), "--reward-of", str(pref.path), "--labels", "0"]) == 2
    assert "--labels 0: " in (err := capsys.readouterr().err) and "has 24 answers; give 1 to 24" in err
    assert main(["eval", str(base.path), "--labels", "8"]) == 2  # the baseline has no reward of its own
    assert "learns no reward; name a preference run with --reward-of" in capsys.readouterr().err
    assert main(["eval", str(base.path), "--window", "5"]) == 2
    assert "--window 5: " in (err := capsys.readouterr().err) and "learns no reward" in err


def test_evaluation_scores_whole_episodes_with_a_given_learned_reward():
    class Constant:  # pays 0.5 a step: an episode's learned return is half its length
        def step_rewards(self, obs, actions):
            return np.full((2, len(obs)), 0.5, np.float32)

    cfg = load_config(None, ["eval_episodes=3", "eval_policy='stochastic'"])
    agent = make_agent(cfg.agent, make_vec_env(cfg.env, seed=0), seed=0)
    result = evaluate(agent, cfg, reward=Constant())
    assert result["eval/learned_return"] == pytest.approx(0.5 * result["eval/ep_len"])
    assert result["eval/true_return"] == pytest.approx(result["eval/ep_len"])  # CartPole's own reward is still 1


class PendulumCost:
    """Pendulum's own reward, computed from the observation before a step and the action, with a chosen sign."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def step_rewards(self, obs, actions):
        theta, torque = np.arctan2(obs[:, 1], obs[:, 0]), np.clip(actions[:, 0], -2.0, 2.0)
        cost = theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * torque**2
        return np.stack([-self.sign * cost] * 2).astype(np.float32)


@pytest.mark.parametrize(("sign", "agreement", "corr"), [(1.0, 1.0, 1.0), (-1.0, 0.0, -1.0)])
def test_evaluation_ranks_pieces_of_play_by_learned_and_true_return(sign, agreement, corr):
    cfg = load_config(None, ["env.id='Pendulum-v1'", "eval_episodes=2", "eval_policy='stochastic'"])
    agent = make_agent(cfg.agent, make_vec_env(cfg.env, seed=0), seed=0)
    result = evaluate(agent, cfg, reward=PendulumCost(sign), window=25)
    assert result["eval/windows"] == 2 * (200 // 25)  # each 200-step episode gives 8 whole pieces
    assert result["eval/window_agreement"] == pytest.approx(agreement, abs=1e-3)
    assert result["eval/window_corr"] == pytest.approx(corr, abs=1e-4)


def test_window_agreement_counts_ties_half_and_samples_many_pairs():
    true = np.repeat([0.0, 1.0], 50)
    same = window_agreement(np.stack([np.zeros(100), true], axis=1))  # the reward cannot tell any apart
    assert same["eval/window_agreement"] == 0.5 and np.isnan(same["eval/window_corr"])
    rng = np.random.default_rng(0)
    learned = true + rng.normal(0, 1, 100)
    exact = window_agreement(np.stack([learned, true], axis=1))
    drawn = window_agreement(np.stack([learned, true], axis=1), max_pairs=2000)
    want = np.mean([a > b for a in learned[50:] for b in learned[:50]])  # each pair of a 1 and a 0
    assert exact["eval/window_agreement"] == pytest.approx(want)
    assert drawn["eval/window_agreement"] == pytest.approx(want, abs=0.05)
    assert np.isnan(window_agreement(np.zeros((0, 2)))["eval/window_agreement"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "env.id=CartPol-v1"], "unknown environment 'CartPol-v1'; did you mean 'CartPole-v1'"),
        (["--set", "labels.totl=3"], "did you mean 'labels.total'"),
        (["--set", "agent.algo=PPOO"], "did you mean 'PPO'"),
        (["--set", "reward.lr=-1"], "reward.lr = -1.0 must be positive"),
        (["--set", "reward.members=1"], "needs reward.members ≥ 2"),
        (["--set", "agent.kwargs={n_stepz = 3}"], "rejected the hyperparameters"),
    ],
)
def test_bad_input_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("prefrl: error:")


def test_standardized_inputs_are_fixed_by_the_first_fit(tmp_path):
    run = RunDir(tmp_path / "run")
    loop.train(load_config(None, [*TINY, "reward.standardize_inputs=true"]), run, progress=False)
    n_first = int(run.metrics().rows[0]["labels/total"])  # asked about random play before RL

    def steps_of(comparisons, store):
        segs = store.segments(i for c in comparisons for i in c.segment_ids).values()
        obs = np.concatenate([s.obs[: s.length] for s in segs])
        onehot = np.eye(2, dtype=np.float32)[np.concatenate([s.actions[: s.length] for s in segs])]
        return np.concatenate([obs, onehot], axis=1)  # CartPole: 4 observations and a one-hot of 2 actions

    with ComparisonStore(run.labels_path) as store:
        answers = store.comparisons()
        first, every = steps_of(answers[:n_first], store), steps_of(answers, store)
    assert n_first < len(answers) == 24
    reward = load_reward(run)  # after the last fit: still the first fit's statistics
    np.testing.assert_allclose(reward.in_shift.numpy(), first.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reward.in_scale.numpy(), first.std(0), rtol=1e-4)
    refit = refit_reward(run, len(answers))  # fit afresh: the statistics of the labels it is fit to
    assert refit.standardize
    np.testing.assert_allclose(refit.in_shift.numpy(), every.mean(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(refit.in_scale.numpy(), reward.in_scale.numpy())


def test_resume_of_a_non_run_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


class NanRewardEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), float("nan"), False, False, {}


def test_nan_rewards_are_refused_before_training(tmp_path):
    gym.register("NanReward-v0", entry_point=NanRewardEnv, max_episode_steps=100)
    cfg = load_config(None, [*TINY, "env.id=NanReward-v0"])
    with pytest.raises(DataError, match="NaN or inf"):
        loop.train(cfg, RunDir(tmp_path / "r"), progress=False)


class DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "vel": gym.spaces.Box(-1, 1, (1,))})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), self.t >= 30, False, {}


class TupleActionEnv(DictObsEnv):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))


def test_a2c_trains_on_dict_observations_flattened(tmp_path):
    gym.register("DictObs-v0", entry_point=DictObsEnv)
    cfg = load_config(None, [*TINY, "env.id=DictObs-v0", "agent.algo=A2C", "agent.kwargs={}", "total_timesteps=3000"])
    run = RunDir(tmp_path / "r")
    result = loop.train(cfg, run, progress=False)
    assert result.timesteps >= 3000 and result.labels == 24
    stored = ComparisonStore(run.labels_path)
    ids = stored.comparisons()[0].segment_ids
    assert stored.segments(ids)[ids[0]].obs.shape == (20, 3)  # Dict(pos: 2, vel: 1) flattened to 3


def test_unsupported_action_space_is_refused(tmp_path, capsys):
    gym.register("TupleAction-v0", entry_point=TupleActionEnv)
    assert (
        main(["train", "--run-dir", str(tmp_path / "r"), "--set", "env.id=TupleAction-v0", "--set", "baseline=false"])
        == 2
    )
    assert "action space Tuple" in capsys.readouterr().err


def test_a_finished_run_is_not_trained_or_evaluated_again(tmp_path, monkeypatch):
    cfg = load_config(None, [*TINY, "reward_source='true'", "total_timesteps=2048"])
    run = RunDir(tmp_path / "r")
    first = loop.train(cfg, run, progress=False)
    rows = len(run.metrics().rows)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: pytest.fail("evaluated a finished run again"))
    again = loop.train(cfg, run, progress=False)
    assert again == first and len(run.metrics().rows) == rows
    with open(run.path / "train.lock", "a+") as held:  # another process still holds it (e.g. writing plots)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert loop.train(cfg, run, progress=False) == first  # a finished run's result needs no lock


@pytest.mark.parametrize(
    "policy, want",
    [("deterministic", [True]), ("stochastic", [False]), ("auto", [True])],  # auto: deterministic off Atari
)
def test_evaluation_acts_as_eval_policy_says(policy, want, monkeypatch):
    from stable_baselines3 import PPO

    cfg = load_config(None, ["eval_episodes=2", f"eval_policy='{policy}'"])
    agent = make_agent(cfg.agent, make_vec_env(cfg.env, seed=0), seed=0)
    seen = []
    real_predict = PPO.predict

    def spy(self, obs, state=None, episode_start=None, deterministic=False):
        seen.append(deterministic)
        return real_predict(self, obs, state, episode_start, deterministic)

    monkeypatch.setattr(PPO, "predict", spy)
    result = evaluate(agent, cfg)
    assert sorted(set(seen)) == want and len(seen) >= 2 * 8  # every step of both episodes, one way
    assert result["eval/true_return"] > 0


@pytest.mark.parametrize(
    "env_id, policy, deterministic",
    [
        ("ALE/Pong-v5", "auto", False),  # rl-baselines3-zoo samples the actions of Atari agents when scoring them
        ("CartPole-v1", "auto", True),
        ("ALE/Pong-v5", "deterministic", True),
        ("CartPole-v1", "stochastic", False),
    ],
)
def test_auto_evaluation_samples_actions_on_atari_only(env_id, policy, deterministic):
    cfg = load_config(None, [f"env.id='{env_id}'", f"eval_policy='{policy}'"])
    assert eval_deterministic(cfg) is deterministic


@pytest.mark.parametrize(
    "env_id, center, want",
    [
        ("ALE/Pong-v5", "auto", "mean"),  # the paper's zero on Atari, though Pong's games end
        ("ALE/Pong-v5", "absorbing", "absorbing"),
        ("CartPole-v1", "auto", "auto"),  # left for normalize: absorbing once an episode ended
        ("CartPole-v1", "mean", "mean"),
    ],
)
def test_the_reward_zero_is_the_mean_on_atari_unless_set(env_id, center, want):
    cfg = load_config(None, [f"env.id='{env_id}'", f"reward.center='{center}'"])
    assert reward_center(cfg) == want


@pytest.mark.parametrize(
    "env_id, share, want",
    [
        ("ALE/Pong-v5", "'auto'", 0.0),  # a game over is an ordinary lost point to the oracle
        ("ALE/Pong-v5", "0.5", 0.5),
        ("CartPole-v1", "'auto'", 0.5),  # a random policy ends few episodes, and the ends are what tells
        ("CartPole-v1", "0", 0.0),
    ],
)
def test_queries_seek_out_episode_ends_except_on_atari_unless_set(env_id, share, want):
    cfg = load_config(None, [f"env.id='{env_id}'", f"labels.ends_share={share}"])
    assert ends_share(cfg) == want


@pytest.mark.parametrize("share", ["'half'", "1.5"])
def test_an_ends_share_outside_0_1_or_auto_is_refused(share):
    with pytest.raises(ConfigError, match=r"labels.ends_share = .* must be in \[0, 1\] or 'auto'"):
        load_config(None, [f"labels.ends_share={share}"])


def test_an_unknown_eval_policy_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="eval_policy = 'greedy' is not one of auto, deterministic, stochastic"):
        load_config(None, ["eval_policy='greedy'"])


def test_a_fresh_agent_trains_on_a_frozen_learned_reward_and_resumes_without_its_source(
    tmp_path, monkeypatch, kill_after
):
    import shutil

    source = RunDir(tmp_path / "pref")
    loop.train(load_config(None, TINY), source, progress=False)
    frozen_sets = ["reward_source='frozen'", f"reward_from='{source.path}'", "total_timesteps=4096", "eval_every=2048"]
    cfg = load_config(None, [*TINY, *frozen_sets])
    run = RunDir(tmp_path / "frozen")
    real_save = kill_after(checkpoint, "save_agent", 2)  # killed after two chunks
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    monkeypatch.setattr(checkpoint, "save_agent", real_save)
    # the agent's reward is the source's final one, and the run keeps its own copy of it
    want = load_reward(source)
    shutil.rmtree(source.path)
    result = loop.train(run.load_config(), run, progress=False)
    assert result.labels == 0 and result.timesteps >= 4096 and not run.labels_path.exists()
    got = freeze_reward(run.load_config(), run)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    acts = np.arange(16) % 2
    np.testing.assert_array_equal(got.step_rewards(obs, acts), want.step_rewards(obs, acts))
    rows = run.metrics().rows
    assert all(np.isfinite(float(r["rollout/predicted_return"])) for r in rows if r.get("rollout/ep_len"))
    learned = [float(r["eval/learned_return"]) for r in rows if r.get("eval/learned_return")]
    assert len(learned) == 2 and all(np.isfinite(learned))  # at 2048 steps and at the end


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["reward_source='frozen'"], "reward_from = '' goes with reward_source = 'frozen' and only with it"),
        (["reward_from='runs/x'"], "reward_from = 'runs/x' goes with reward_source = 'frozen' and only with it"),
    ],
)
def test_a_frozen_reward_needs_its_run_and_only_then(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_a_frozen_reward_from_another_environment_or_a_true_reward_run_is_refused(tmp_path):
    true_run = RunDir(tmp_path / "true")
    loop.train(load_config(None, [*TINY, "reward_source='true'", "total_timesteps=1024"]), true_run, progress=False)
    frozen = ["reward_source='frozen'", f"reward_from='{true_run.path}'"]
    with pytest.raises(FileNotFoundError, match="no learned reward model"):
        loop.train(load_config(None, [*TINY, *frozen]), RunDir(tmp_path / "a"), progress=False)
    other_env = load_config(None, [*TINY, *frozen, "env.id='Acrobot-v1'"])
    with pytest.raises(ConfigError, match="learned its reward on CartPole-v1, this run acts on Acrobot-v1"):
        loop.train(other_env, RunDir(tmp_path / "b"), progress=False)


def test_linear_schedules_decay_over_the_whole_run_across_chunks_and_a_resume(tmp_path, monkeypatch, kill_after):
    # The quickstart's PPO has `lin_` schedules; SB3 alone would restart them at every chunk's learn() call.
    cfg = load_config(None, [*TINY, "reward_source='true'", "total_timesteps=4096"])
    assert cfg.agent.kwargs["learning_rate"] == "lin_0.001"
    updates = []
    real_update = PPO.train

    def train(self):
        real_update(self)
        updates.append(
            (self.num_timesteps, self._current_progress_remaining, self.policy.optimizer.param_groups[0]["lr"])
        )

    monkeypatch.setattr(PPO, "train", train)
    run = RunDir(tmp_path / "r")
    real_save = kill_after(checkpoint, "save_agent", 2)  # killed after its second chunk
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    killed_at = updates[-1][0]
    monkeypatch.setattr(checkpoint, "save_agent", real_save)
    loop.train(run.load_config(), run, progress=False)

    steps = [t for t, _, _ in updates]
    assert steps[0] < cfg.chunk_steps < killed_at < steps[-1] == cfg.total_timesteps
    for t, progress, lr in updates:
        assert progress == pytest.approx(1 - t / cfg.total_timesteps)
        assert lr == pytest.approx(1e-3 * (1 - t / cfg.total_timesteps))


def test_a_damaged_checkpoint_is_refused_in_one_line_and_its_labels_start_the_run_over(
    tmp_path, monkeypatch, kill_after, capsys
):
    cfg = load_config(None, TINY)
    run = RunDir(tmp_path / "run")
    real_checkpoint = kill_after(checkpoint, "save", 3)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    monkeypatch.setattr(checkpoint, "save", real_checkpoint)
    before = ComparisonStore(run.labels_path).comparisons()
    buffer = run.ckpt / "buffer.npz"
    buffer.write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])  # cut short, as by a full disk
    assert main(["train", "--resume", str(run.path), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prefrl: error:")]
    assert len(err) == 1 and "buffer.npz is damaged" in err[0] and "labels.sqlite are intact" in err[0]
    assert ComparisonStore(run.labels_path).comparisons() == before  # no label lost

    run.ckpt.rename(tmp_path / "damaged")  # as the message says: move the checkpoint aside, resume again
    assert main(["train", "--resume", str(run.path), "--no-progress"]) == 0
    after = {c.query_id: c for c in ComparisonStore(run.labels_path).comparisons()}
    assert all(after[c.query_id] == c for c in before) and len(after) == 24
    steps = [int(r["timesteps"]) for r in run.metrics().rows[:-1]]
    assert steps == sorted(set(steps))  # logged afresh, not after the old rows


def test_a_saved_config_without_a_newer_key_resumes_with_the_behaviour_it_started_with(monkeypatch):
    from prefrl import config

    text = config.dumps_config(load_config(None))
    assert 'norm_on = "recent"' in text
    older = text.replace('norm_on = "recent"\n', "")  # saved before reward.norm_on existed
    monkeypatch.setitem(config.SINCE, ("reward", "norm_on"), "first")  # as if the old behaviour were "first"
    assert config.loads_config(older).reward.norm_on == "first"
    assert config.loads_config(text).reward.norm_on == "recent"  # a key the run saved is kept as saved


def test_a_control_run_uses_one_torch_thread_unless_told_or_its_observations_are_images(monkeypatch):
    import torch

    from prefrl.cli import set_torch_threads

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls: list[int] = []
    set_torch_threads(0, load_config(None, []))  # CartPole: small MLPs
    set_torch_threads(2, load_config(None, []))
    set_torch_threads(0, load_config(None, ["env.id='ALE/Pong-v5'"]))  # CNNs: torch's own choice
    assert calls == [1, 2]
    with pytest.raises(ConfigError, match="--threads -1"):
        set_torch_threads(-1, load_config(None, []))
