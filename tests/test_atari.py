"""Atari end to end: Pong's env stack, the score hidden from the reward model, 25-step segments of stacked
frames, the CNN ensemble fit to them, clips replayed from saved emulator states, a tiny run that resumes."""

from __future__ import annotations

from pathlib import Path

import av
import gymnasium as gym
import numpy as np
import pytest
import torch

import prefrl.checkpoint as checkpoint
import prefrl.loop as loop
from prefrl.clips import ClipRenderer, state_fn_for
from prefrl.config import ConfigError, EnvConfig, load_config
from prefrl.data import Comparison, ComparisonStore
from prefrl.make import make_vec_env
from prefrl.reward import RewardEnsemble, RewardTrainer
from prefrl.run import RunDir
from prefrl.segments import RecordSegments, SegmentBuffer, collect_random

PONG = "ALE/Pong-v5"
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "atari_pong.toml"
GAMES = ("beamrider", "breakout", "enduro", "pong", "qbert", "seaquest", "spaceinvaders")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The CNN's small convolutions run no faster on two threads, and far slower when other work shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pong_config() -> EnvConfig:
    return load_config(EXPERIMENT, ["env.n_envs=2"]).env


@pytest.fixture(scope="module")
def pong_segments():
    """Random-policy Pong segments, recorded as the loop records them for people (with emulator states)."""
    cfg = pong_config()
    buffer = SegmentBuffer(100)
    venv = make_vec_env(cfg, seed=0)
    record = RecordSegments(venv, length=25, buffer=buffer, env_id=cfg.id, state_fn=state_fn_for(cfg.id))
    collect_random(record, min_segments=8, max_steps=10_000, rng=np.random.default_rng(0))
    venv.close()
    return list(buffer)


def test_pong_makes_stacked_84x84_frames_and_steps_four_frames_at_a_time():
    venv = make_vec_env(pong_config(), seed=0)
    assert venv.observation_space.shape == (4, 84, 84) and venv.observation_space.dtype == np.uint8
    assert venv.action_space == gym.spaces.Discrete(6)
    obs = venv.reset()
    assert obs.shape == (2, 4, 84, 84)
    ale = venv.unwrapped.envs[0].unwrapped.ale
    before = ale.getEpisodeFrameNumber()
    obs, rewards, *_ = venv.step(np.array([0, 0]))
    assert ale.getEpisodeFrameNumber() - before == 4  # ALE's own frame skip is off; the wrapper's 4 remain
    assert obs.shape == (2, 4, 84, 84) and rewards.shape == (2,)
    venv.close()


def test_a_lost_life_ends_the_agents_episode_but_the_logged_return_is_the_whole_games():
    cfg = load_config(EXPERIMENT.with_name("atari_breakout.toml"), ["env.n_envs=1"]).env
    venv = make_vec_env(cfg, seed=0)
    venv.reset()
    rng = np.random.default_rng(0)
    dones = 0
    for _ in range(5000):
        _, _, done, infos = venv.step(rng.integers(4, size=1))
        dones += int(done[0])
        if "episode" in infos[0]:
            break
    assert "episode" in infos[0] and dones == 5  # five lives, one game
    venv.close()


def test_the_random_policy_score_of_a_grid_counts_whole_games_not_lives():
    from prefrl.bench.report import random_return

    cfg = load_config(EXPERIMENT.with_name("atari_breakout.toml"))
    score = random_return(cfg, episodes=2)
    assert 0 <= score < 10  # a random Breakout game scores about 1; one life would end it after a few points


def test_every_game_has_an_experiment_with_its_score_hidden():
    for game in GAMES:
        cfg = load_config(EXPERIMENT.with_name(f"atari_{game}.toml"))
        assert cfg.env.id.startswith("ALE/") and cfg.agent.algo == "A2C" and cfg.env.frame_stack == 4
        assert cfg.reward.blank, game
        assert round(cfg.labels.total * cfg.labels.initial_fraction) == 500 and cfg.reward.initial_epochs == 200
        assert cfg.reward.max_labels == 3000


def test_the_score_is_blanked_in_the_reward_models_input_and_nothing_else(pong_segments):
    cfg = load_config(EXPERIMENT)
    obs = np.stack([s.obs[s.length - 1] for s in pong_segments])  # (B, 4, 84, 84) real frames, scores showing
    top, bottom, left, right = cfg.reward.blank[0]
    assert obs[:, :, top:bottom].max() > obs[:, :, bottom : bottom + 20].min() + 40  # the digits are in there
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    ensemble = RewardEnsemble(space, gym.spaces.Discrete(6), members=2, blank=cfg.reward.blank).eval()
    seen = obs.copy()
    x, _ = ensemble.features(seen, None)  # what the CNN is given
    x = x.numpy()
    hidden = np.zeros((84, 84), dtype=bool)
    hidden[top:bottom, left:right] = True
    assert (x[:, :, hidden] == 0).all()
    np.testing.assert_array_equal(x[:, :, ~hidden], obs[:, :, ~hidden])
    np.testing.assert_array_equal(seen, obs)  # the agent's frames are untouched
    # so the predicted reward cannot depend on the score, and does depend on the rest of the screen
    other_score = obs.copy()
    other_score[:, :, top:bottom] = 255 - other_score[:, :, top:bottom]
    np.testing.assert_array_equal(ensemble.step_rewards(other_score, None), ensemble.step_rewards(obs, None))
    other_play = obs.copy()
    other_play[:, :, 40:60] = 255 - other_play[:, :, 40:60]
    assert not np.allclose(ensemble.step_rewards(other_play, None), ensemble.step_rewards(obs, None))


@pytest.mark.parametrize(("blank", "message"), [("[[5, 2, 0, 84]]", "top < bottom"), ("[[0, 9, 0]]", "rectangles")])
def test_a_blanked_region_that_is_not_a_rectangle_is_refused(blank, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EXPERIMENT, [f"reward.blank={blank}"])


def test_a_blanked_region_outside_the_frame_is_refused_before_any_compute(tmp_path):
    cfg = load_config(EXPERIMENT, ["env.n_envs=1", "reward.blank=[[0, 90, 0, 84]]"])
    with pytest.raises(ConfigError, match=r"reward: blank region \[0, 90, 0, 84\] is not inside the 84x84 frame"):
        loop.train(cfg, RunDir(tmp_path / "run"), progress=False)


def test_pong_is_cut_into_25_step_segments_of_stacked_frames(pong_segments):
    assert len(pong_segments) >= 8
    for seg in pong_segments:
        assert seg.obs.shape == (25, 4, 84, 84) and seg.obs.dtype == np.uint8
        assert seg.actions.shape == (25,) and seg.true_rewards.shape == (25,)
        # consecutive stacks share three frames: each step pushes one new frame
        np.testing.assert_array_equal(seg.obs[1 : seg.length, :3], seg.obs[: seg.length - 1, 1:])


def test_the_cnn_ensemble_takes_gradient_steps_on_atari_segments(pong_segments):
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    ensemble = RewardEnsemble(space, gym.spaces.Discrete(6), members=2, blank=[[0, 9, 0, 84]], seed=0)
    trainer = RewardTrainer(ensemble, val_fraction=0.0, seed=0)
    segs = {s.id: s for s in pong_segments[:4]}
    ids = list(segs)
    comparisons = [Comparison((ids[0], ids[1]), label=0), Comparison((ids[2], ids[3]), label=1)]
    before = [p.detach().clone() for p in ensemble.net.parameters()]
    metrics = trainer.fit(comparisons, segs, epochs=1, min_steps=1)
    assert metrics["reward/steps"] == 1 and np.isfinite(metrics["reward/train_loss"])
    changed = [not torch.equal(a, b) for a, b in zip(before, ensemble.net.parameters(), strict=True)]
    assert all(changed)  # every conv, norm and FC layer of every member moved
    rewards = ensemble.step_rewards(pong_segments[0].obs, None)  # (K, T)
    assert rewards.shape == (2, 25) and np.isfinite(rewards).all()


def test_a_clip_replays_the_queried_segment_and_shows_the_game_screen(pong_segments, tmp_path):
    renderer = ClipRenderer(PONG, env_kwargs=pong_config().kwargs, size=256)
    for seg in pong_segments:
        assert seg.states is not None and seg.states.shape[0] == 25 and seg.states.dtype == np.uint8
        np.testing.assert_array_equal(renderer.replay_observations(seg), seg.obs[1 : seg.length])
    # the check has teeth: the states of another segment do not replay to this one
    a, b = pong_segments[0], pong_segments[1]
    swapped = type(a)(**{**a.__dict__, "states": b.states})
    assert not np.array_equal(renderer.replay_observations(swapped), a.obs[1 : a.length])

    frames = renderer.frames(a)
    assert frames.shape == (25, 256, 194, 3)  # the 210x160 colour screen, scaled, one frame per step
    assert (frames[..., 0].astype(int) - frames[..., 2]).std() > 10  # in colour, not the agent's grey input
    path = renderer.write(a, tmp_path / "pong.mp4")
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 15  # real time: 60 Hz, 4 frames a step
        decoded = [f.to_ndarray(format="rgb24") for f in clip.decode(stream)]
    assert len(decoded) == 25
    assert np.abs(decoded[12].astype(int) - frames[12].astype(int)).mean() < 8
    renderer.close()


TINY = [
    "total_timesteps=320",
    "chunk_steps=160",
    "env.n_envs=4",
    "labels.total=6",
    "labels.initial_fraction=0.5",
    "segments.buffer_size=20",
    "reward.members=2",
    "reward.initial_epochs=1",
    "reward.epochs=1",
    "reward.min_steps=1",
    "eval_episodes=0",
]


def test_a_tiny_pong_run_checkpoints_and_resumes_with_its_labels(tmp_path, monkeypatch, kill_after):
    cfg = load_config(EXPERIMENT, TINY)
    run = RunDir(tmp_path / "run")
    real_checkpoint = kill_after(checkpoint, "save", 2)  # killed after the first chunk's checkpoint
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    before = {c.query_id: c for c in ComparisonStore(run.labels_path).comparisons()}
    assert run.read_state()["timesteps"] == 160 and len(before) >= 3
    saved = torch.load(run.ckpt / "reward.pt", weights_only=False)["reward"]
    assert saved["scale"].max() > 0

    monkeypatch.setattr(checkpoint, "save", real_checkpoint)
    result = loop.train(run.load_config(), run, progress=False)
    after = {c.query_id: c for c in ComparisonStore(run.labels_path).comparisons()}
    assert all(after[q] == before[q] for q in before)
    assert result.timesteps == 320 and result.labels == len(after) == 6
    assert run.load_config().reward.blank == [[0, 9, 0, 84]]
