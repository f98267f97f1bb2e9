"""Clips people watch are the segments they were asked about, and the browser can play them."""

from __future__ import annotations

import dataclasses
import threading
import time

import av
import numpy as np
import pytest

from prefrl.clips import ClipCache, ClipError, ClipRenderer, state_fn_for
from prefrl.config import EnvConfig
from prefrl.make import make_vec_env
from prefrl.segments import RecordSegments, SegmentBuffer, collect_random


def record(env_id: str, n: int = 12, T: int = 50, **env_kwargs):
    buffer = SegmentBuffer(1000)
    venv = make_vec_env(EnvConfig(id=env_id, n_envs=2, kwargs=env_kwargs), seed=0)
    rec = RecordSegments(venv, length=T, buffer=buffer, env_id=env_id, state_fn=state_fn_for(env_id))
    collect_random(rec, min_segments=n, max_steps=100_000, rng=np.random.default_rng(0))
    venv.close()
    return list(buffer)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCar-v0"])
def test_saved_states_replay_to_the_recorded_observations(env_id):
    renderer = ClipRenderer(env_id)
    for seg in record(env_id, n=6):
        assert seg.states is not None and seg.states.shape[0] == seg.T
        replayed = renderer.replay_observations(seg)  # (length - 1, *obs) stepping each saved state
        np.testing.assert_array_equal(replayed, seg.obs[1 : seg.length])
    renderer.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_clip_is_an_mp4_of_the_segment_in_real_time(env_id, tmp_path):
    segments = record(env_id)
    # CartPole: a segment the pole fell in, so the absorbing padding is rendered too
    seg = min(segments, key=lambda s: s.length) if env_id.startswith("CartPole") else segments[0]
    renderer = ClipRenderer(env_id, size=128)
    start = time.perf_counter()
    path = renderer.write(seg, tmp_path / "clip.mp4")
    ms = (time.perf_counter() - start) * 1e3
    print(f"{env_id}: render+encode {ms:.0f} ms for {seg.T} frames, {path.stat().st_size} bytes")
    frames = renderer.frames(seg)
    with av.open(str(path)) as clip:  # the stream's properties are readable only while the file is open
        stream = clip.streams.video[0]
        codec, rate = stream.codec_context.name, stream.average_rate
        decoded = [f.to_ndarray(format="rgb24") for f in clip.decode(stream)]
    assert codec == "h264"
    # a frame per shown step (CartPole: 50 steps/s, every 2nd; Pendulum: 30, all), lasting as long as the steps do
    assert len(decoded) == len(frames) == len(renderer.frame_steps(seg)) == -(-seg.T // renderer.stride)
    assert renderer.fps <= 30 and rate == renderer.fps
    assert renderer.fps * renderer.stride == renderer.env.metadata["render_fps"]
    assert decoded[0].shape == frames[0].shape and decoded[0].shape[0] % 2 == 0 and decoded[0].shape[1] % 2 == 0
    assert max(decoded[0].shape[:2]) == 128
    # the decoded video shows the rendered frames (lossy, so close rather than equal)
    assert np.abs(decoded[0].astype(int) - frames[0].astype(int)).mean() < 8
    if seg.length < seg.T:
        assert decoded[-1].mean() < 80 < decoded[0].mean()  # the dark "episode ended" frame


def test_mujoco_clips_show_the_queried_steps_in_real_time_at_most_30_frames_a_second():
    """Hopper: every 5th of its 125 steps a second is drawn, and each drawn frame is exactly the frame of that
    step's saved state."""
    (seg,) = record("Hopper-v5", n=1, T=30, terminate_when_unhealthy=False)[:1]
    assert seg.length == seg.T == 30
    every_step = ClipRenderer("Hopper-v5", size=64, max_fps=0)
    clip = ClipRenderer("Hopper-v5", size=64)
    assert (every_step.stride, clip.stride, clip.fps) == (1, 5, 25)
    steps = list(clip.frame_steps(seg))
    assert steps == list(range(0, 30, 5))
    replayed = every_step.replay_observations(seg)  # the saved states are the segment's (MuJoCo too)
    np.testing.assert_allclose(replayed, seg.obs[1:], rtol=1e-6, atol=1e-6)
    shown = clip.frames(seg)  # (6, 64, 64, 3)
    short = dataclasses.replace(seg, length=steps[-1] + 1, terminated=True)  # only up to the last shown step, for speed
    all_frames = every_step.frames(short)
    np.testing.assert_array_equal(shown, all_frames[steps])
    assert len(np.unique(shown.reshape(len(shown), -1), axis=0)) > len(shown) // 2  # the hopper moves
    every_step.close()
    clip.close()


def test_mujoco_effects_are_off_unless_asked_for():
    """Shadows, reflections, skybox, haze and antialiasing cost most of a software frame; clips skip them."""
    (seg,) = record("Hopper-v5", n=1, T=10)[:1]
    one = dataclasses.replace(seg, length=1, terminated=True)
    plain = ClipRenderer("Hopper-v5", size=64)
    plain_frame = plain.frames(one)[0]
    plain.close()
    rich = ClipRenderer("Hopper-v5", size=64, effects=True)
    rich_frame = rich.frames(one)[0]
    rich.close()
    assert plain_frame[:8].max() == 0 < rich_frame[:8].mean()  # the sky: black, or the skybox
    assert np.abs(plain_frame.astype(int) - rich_frame.astype(int)).mean() > 5


def test_cache_renders_clips_someone_waits_for_first(tmp_path):
    segments = {s.id: s for s in record("CartPole-v1", n=5)}
    a, b, c, d = list(segments)[:4]
    loads, started, gate = [], threading.Event(), threading.Event()

    def load(sid):
        loads.append(sid)
        if sid == a:  # the worker is busy with the first clip while more are asked for
            started.set()
            gate.wait(60)
        return segments[sid]

    cache = ClipCache(tmp_path, load=load, size=64, workers=1)
    cache.prefetch([a, b, c])
    assert started.wait(60)
    cache.prefetch([d], urgent=True)  # a labeler is about to watch d
    gate.set()
    paths = [cache.get(i, timeout=60) for i in (a, b, c, d)]
    assert loads == [a, d, b, c] and all(p.stat().st_size > 0 for p in paths)
    cache.close()


def test_cache_renders_ahead_once_and_serves_from_disk(tmp_path):
    segments = {s.id: s for s in record("CartPole-v1", n=4)}
    loads = []

    def load(sid):
        loads.append(sid)
        return segments[sid]

    cache = ClipCache(tmp_path, load=load, size=64, workers=2)
    ids = list(segments)[:4]
    cache.prefetch(ids)
    paths = [cache.get(i, timeout=60) for i in ids]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    cache.prefetch(ids)
    assert [cache.get(i) for i in ids] == paths
    assert sorted(loads) == sorted(ids)  # each rendered exactly once
    cache.close()
    fresh = ClipCache(tmp_path, load=load, size=64)  # a restarted server reuses the files
    assert fresh.get(ids[0]) == paths[0] and len(loads) == len(ids)
    fresh.close()


def test_environments_without_saved_state_are_refused_with_a_reason():
    with pytest.raises(ClipError, match="classic control"):
        state_fn_for("FrozenLake-v1")
