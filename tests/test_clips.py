"""Clips people watch are the segments they were asked about, and the browser can play them."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from prefrl.clips import ClipCache, ClipError, ClipRenderer, state_fn_for
from prefrl.config import EnvConfig
from prefrl.make import make_vec_env
from prefrl.segments import RecordSegments, SegmentBuffer, collect_random


def record(env_id: str, n: int = 12, T: int = 50):
    buffer = SegmentBuffer(1000)
    venv = make_vec_env(EnvConfig(id=env_id, n_envs=2), seed=0)
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
def test_clip_is_an_mp4_of_the_segment_with_one_frame_per_step(env_id, tmp_path):
    segments = record(env_id)
    # CartPole: a segment the pole fell in, so the absorbing padding is rendered too
    seg = min(segments, key=lambda s: s.length) if env_id.startswith("CartPole") else segments[0]
    renderer = ClipRenderer(env_id, size=128)
    start = time.perf_counter()
    path = renderer.write(seg, tmp_path / "clip.mp4")
    ms = (time.perf_counter() - start) * 1e3
    print(f"{env_id}: render+encode {ms:.0f} ms for {seg.T} frames, {path.stat().st_size} bytes")
    frames = renderer.frames(seg)
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in clip.decode(stream)]
    assert len(decoded) == seg.T
    assert decoded[0].shape == frames[0].shape and decoded[0].shape[0] % 2 == 0 and decoded[0].shape[1] % 2 == 0
    assert max(decoded[0].shape[:2]) == 128
    # the decoded video shows the rendered frames (lossy, so close rather than equal)
    assert np.abs(decoded[0].astype(int) - frames[0].astype(int)).mean() < 8
    if seg.length < seg.T:
        assert decoded[-1].mean() < 80 < decoded[0].mean()  # the dark "episode ended" frame


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
