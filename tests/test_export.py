"""Export a run's labels (csv, npz) and replay an export into a new run."""

from __future__ import annotations

import csv

import gymnasium as gym
import numpy as np
import pytest

from prefrl.cli import main
from prefrl.config import OracleConfig, load_config
from prefrl.data import SKIP, TIE, Comparison, ComparisonStore, DataError, Query, Segment
from prefrl.export import REPLAY_ID_BASE, read_npz
from prefrl.make import check_config, make_oracle
from prefrl.reward import RewardEnsemble, RewardTrainer

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def segments(rng, n, *, first_id=0, T=10):
    """True reward is the first observation coordinate; every third segment ends early (absorbing padding)."""
    out = []
    for i in range(n):
        obs = rng.normal(size=(T, 3)).astype(np.float32)
        length = T if i % 3 else int(rng.integers(2, T))
        r = obs[:, 0].copy()
        r[length:] = 0.0
        states = rng.normal(size=(T, 5)) if i % 2 else None
        act = rng.uniform(-1, 1, (T, 1)).astype(np.float32)
        text = f"segment {i}" if i % 4 == 0 else None
        out.append(Segment(first_id + i, obs, act, r, length, length < T, "Toy-v0", i, 2 * i, states, text))
    return out


def labelled(rng, segs, n, k=2):
    """Comparisons labelled by true return, as the synthetic oracle would."""
    out = []
    for _ in range(n):
        pick = rng.choice(len(segs), size=k, replace=False)
        ret = [segs[j].true_return for j in pick]
        out.append(Comparison(tuple(segs[j].id for j in pick), int(np.argmax(ret)), labeler="oracle"))
    return out


@pytest.fixture
def run(tmp_path):
    """A run directory whose label store holds 300 pairs, a tie, a skip and a best-of-4 answer."""
    rng = np.random.default_rng(0)
    segs = segments(rng, 120)
    comps = labelled(rng, segs, 300)
    comps += [Comparison((0, 1), TIE, labeler="ada"), Comparison((2, 3), SKIP, source="human", labeler="ada")]
    comps += labelled(rng, segs, 1, k=4)
    path = tmp_path / "run"
    with ComparisonStore(path / "labels.sqlite") as store:
        store.add_many(comps, segs)
    return path, segs, comps


def test_npz_export_holds_every_comparison_and_segment_without_pickle(run, tmp_path):
    path, segs, comps = run
    assert main(["export", str(path), "--format", "npz"]) == 0
    out = path / "labels.npz"
    with np.load(out, allow_pickle=False) as z:  # plain numpy reads it, no object arrays
        assert z["segment_ids"].shape == (len(comps), 4) and z["segment_obs"].dtype == np.float32
    got_comps, got_segs = read_npz(out)
    assert got_comps == comps
    assert set(got_segs) == {s.id for s in segs}
    for s in segs:
        g = got_segs[s.id]
        assert np.array_equal(g.obs, s.obs) and np.array_equal(g.true_rewards, s.true_rewards)
        for name in ("length", "terminated", "episode", "start", "text", "env_id"):
            assert getattr(g, name) == getattr(s, name), name
        assert (g.states is None) == (s.states is None)


def test_csv_export_is_one_row_per_comparison(run, tmp_path):
    path, segs, comps = run
    out = tmp_path / "labels.csv"
    assert main(["export", str(path), "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(comps)
    by_id = {s.id: s for s in segs}
    for row, c in zip(rows, comps, strict=True):
        assert row["query_id"] == c.query_id and row["labeler"] == c.labeler and row["source"] == c.source
        assert [int(i) for i in row["segment_ids"].split(";")] == list(c.segment_ids)
        assert int(row["label"]) == c.label and float(row["time"]) == c.time and row["time_iso"].endswith("+00:00")
        returns = [float(r) for r in row["true_returns"].split(";")]
        assert returns == pytest.approx([by_id[i].true_return for i in c.segment_ids], rel=1e-5, abs=1e-5)
        expected = {TIE: "tie", SKIP: "skip"}.get(c.label, str(c.segment_ids[c.label]) if c.label >= 0 else "")
        assert row["preferred"] == expected


def test_an_export_replayed_into_a_new_run_teaches_its_reward_the_original_ranking(run, tmp_path):
    path, _, comps = run
    main(["export", str(path), "--format", "npz", "--out", str(tmp_path / "labels.npz")])
    cfg = OracleConfig(kind="replay", replay_file=str(tmp_path / "labels.npz"))
    new = tmp_path / "new" / "labels.sqlite"
    oracle = make_oracle(cfg, seed=0, labels_path=new)
    make_oracle(cfg, seed=0, labels_path=new)  # a resumed run imports again: nothing is added twice
    store = ComparisonStore(new)
    imported = store.comparisons()
    assert len(imported) == len(comps) and {c.source for c in imported} == {"replay"}
    assert [(c.query_id, c.label, c.labeler) for c in imported] == [(c.query_id, c.label, c.labeler) for c in comps]
    assert min(i for c in imported for i in c.segment_ids) >= REPLAY_ID_BASE  # clear of the new run's own ids
    # the new run's own segments (ids from 0) are stored beside the imported ones, never mistaken for them
    mine = segments(np.random.default_rng(1), 4)
    store.add_segments(mine)
    assert np.array_equal(store.segments([0])[0].obs, mine[0].obs)
    oracle.submit([Query((mine[0], mine[1]))])  # a question about segments nobody labelled: can't tell
    assert [c.label for c in oracle.collect()] == [SKIP]

    ensemble = RewardEnsemble(OBS, ACT, members=3, hidden=(32, 32), seed=0)
    trainer = RewardTrainer(ensemble, seed=0)
    trainer.fit(imported, store.segments(i for c in imported for i in c.segment_ids), epochs=60)
    rng = np.random.default_rng(7)
    held_out = segments(rng, 200, first_id=10_000)
    pairs = labelled(rng, held_out, 300)  # what the original labeler would answer
    R = ensemble.returns_of(held_out).mean(0)  # (S,) ensemble mean of predicted returns
    pos = {s.id: j for j, s in enumerate(held_out)}
    agree = np.mean([int(R[pos[c.segment_ids[1]]] > R[pos[c.segment_ids[0]]]) == c.label for c in pairs])
    assert agree > 0.85, f"replayed labels taught a reward that ranks only {agree:.0%} of held-out pairs right"


def test_replay_refuses_a_file_it_cannot_replay_before_any_compute(run, tmp_path):
    path, _, _ = run
    main(["export", str(path), "--format", "csv", "--out", str(tmp_path / "labels.csv")])
    with pytest.raises(DataError, match="csv export carries no segments"):
        check_config(load_config(None, ["oracle.kind=replay", f"oracle.replay_file={tmp_path / 'labels.csv'}"]))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an npz label export"):
        check_config(load_config(None, ["oracle.kind=replay", f"oracle.replay_file={tmp_path / 'junk.npz'}"]))
    assert main(["export", str(tmp_path / "nothing")]) == 2


def test_train_replays_an_export_from_another_run(tmp_path):
    from prefrl.loop import train
    from prefrl.run import RunDir

    rng = np.random.default_rng(3)  # another CartPole run's labels: pairs of 20-step segments, longer is better
    segs = []
    for i in range(40):
        length = int(rng.integers(3, 21))
        obs = rng.uniform(-0.05, 0.05, (20, 4)).astype(np.float32)
        rewards = np.r_[np.ones(length), np.zeros(20 - length)].astype(np.float32)
        segs.append(Segment(i, obs, rng.integers(2, size=20), rewards, length, length < 20, "CartPole-v1"))
    with ComparisonStore(tmp_path / "first" / "labels.sqlite") as store:
        store.add_many(labelled(rng, segs, 16), segs)
    assert main(["export", str(tmp_path / "first"), "--out", str(tmp_path / "first.npz")]) == 0
    tiny = ["total_timesteps=1024", "labels.total=16", "eval_episodes=1", "baseline=false", "chunk_steps=1024"]
    tiny += ["segments.length=20", "reward.initial_epochs=5", "reward.epochs=1", "reward.min_steps=0"]
    cfg = load_config(None, [*tiny, "oracle.kind=replay", f"oracle.replay_file={tmp_path / 'first.npz'}"])
    run = RunDir(tmp_path / "second")
    result = train(cfg, run, progress=False)
    got = ComparisonStore(run.labels_path).comparisons()
    original = ComparisonStore(tmp_path / "first" / "labels.sqlite").comparisons()
    assert [(c.query_id, c.label) for c in got] == [(c.query_id, c.label) for c in original]
    assert {c.source for c in got} == {"replay"} and result.labels == 16
    assert float(run.metrics().rows[0]["labels/total"]) == 16  # the reward was fit to them before RL began
