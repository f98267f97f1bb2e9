import sqlite3

import numpy as np
import pytest

from prefrl.data import SKIP, TIE, Comparison, ComparisonStore, DataError, Segment, load_segments, save_segments


def seg(i: int, T: int = 5, length: int | None = None, terminated: bool = False) -> Segment:
    length = T if length is None else length
    rew = np.zeros(T, dtype=np.float32)
    rew[:length] = i
    return Segment(
        id=i,
        obs=np.full((T, 3), i, dtype=np.float32),
        actions=np.zeros((T,), dtype=np.int64),
        true_rewards=rew,
        length=length,
        terminated=terminated,
        env_id="CartPole-v1",
        episode=i,
        start=0,
    )


def test_segment_validation_names_the_problem():
    with pytest.raises(DataError, match="actions has 4 steps"):
        Segment(
            id=1,
            obs=np.zeros((5, 3)),
            actions=np.zeros(4),
            true_rewards=np.zeros(5),
            length=5,
            terminated=False,
            env_id="x",
        )
    with pytest.raises(DataError, match=r"padded .* but not terminated"):
        seg(1, length=3, terminated=False)
    with pytest.raises(DataError, match="NaN"):
        Segment(
            id=1,
            obs=np.zeros((2, 1)),
            actions=np.zeros(2),
            true_rewards=np.array([0, np.nan]),
            length=2,
            terminated=False,
            env_id="x",
        )


def test_segment_mask_and_return():
    s = seg(3, T=5, length=2, terminated=True)
    assert s.mask.tolist() == [1, 1, 0, 0, 0]
    assert s.true_return == 6.0


def test_segment_npz_round_trip_without_pickle(tmp_path):
    s = seg(4, length=3, terminated=True)
    back = Segment.from_npz_bytes(s.to_npz_bytes())
    assert back.id == 4 and back.length == 3 and back.terminated
    np.testing.assert_array_equal(back.obs, s.obs)
    save_segments(tmp_path / "b.npz", [seg(1), seg(2, length=2, terminated=True)])
    loaded = load_segments(tmp_path / "b.npz")
    assert [x.id for x in loaded] == [1, 2] and loaded[1].length == 2
    # readable with plain numpy and no pickle
    with np.load(tmp_path / "b.npz", allow_pickle=False) as z:
        assert z["obs"].shape == (2, 5, 3)


def test_comparison_validation():
    with pytest.raises(DataError, match=r"label 2 must be 0\.\.1"):
        Comparison(segment_ids=(1, 2), label=2)
    with pytest.raises(DataError, match="compared with itself"):
        Comparison(segment_ids=(1, 1), label=0)
    assert Comparison(segment_ids=(1, 2, 3, 4), label=3).k == 4
    assert Comparison(segment_ids=(1, 2), label=TIE).label == TIE


def test_store_commits_each_answer_and_is_idempotent(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = ComparisonStore(path)
    c = Comparison(segment_ids=(1, 2), label=0, labeler="t")
    assert store.add(c, [seg(1), seg(2)])
    assert not store.add(c, [seg(1), seg(2)])  # a retried answer counts once
    store.add(Comparison(segment_ids=(2, 3), label=SKIP), [seg(3)])
    # another connection (another process) sees the answers without any close/flush
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 2
    other.close()
    reopened = ComparisonStore(path)
    cs = reopened.comparisons()
    assert [x.segment_ids for x in cs] == [(1, 2), (2, 3)]
    assert reopened.count(include_skipped=False) == 1
    segs = reopened.segments([1, 3])
    assert segs[3].true_return == 15.0
    assert [x.segment_ids for x in reopened.comparisons(last=1)] == [(2, 3)]


def test_store_missing_segment_and_corrupt_file(tmp_path):
    store = ComparisonStore(tmp_path / "a.sqlite")
    with pytest.raises(DataError, match="not stored"):
        store.segments([99])
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(DataError, match=r"not a readable label store"):
        ComparisonStore(bad)
