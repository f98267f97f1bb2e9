import itertools
import math

import numpy as np
import pytest

from prefrl.data import SKIP, TIE, Comparison, Query, Segment
from prefrl.oracles import (
    TEACHERS,
    Oracle,
    ReplayOracle,
    SyntheticOracle,
    ask,
    make_teacher,
    segment_value,
)

_ids = itertools.count()


def seg(rewards) -> Segment:
    """A full (unpadded) segment paying ``rewards``."""
    r = np.asarray(rewards, dtype=np.float32)
    T = len(r)
    return Segment(
        id=next(_ids),
        obs=np.zeros((T, 3), np.float32),
        actions=np.zeros((T, 1), np.float32),
        true_rewards=r,
        length=T,
        terminated=False,
        env_id="Test-v0",
    )


def labels(oracle, queries):
    return [c.label for c in ask(oracle, queries)]


def binomial_tol(p, n, sigmas=4.0):
    return sigmas * math.sqrt(p * (1 - p) / n)


def test_rational_teacher_follows_true_ordering_for_pairs_and_k_way():
    rng = np.random.default_rng(1)
    oracle = SyntheticOracle()
    for k in (2, 3, 4):
        queries = [Query(tuple(seg(rng.normal(size=10)) for _ in range(k))) for _ in range(100)]
        expected = [int(np.argmax([s.true_return for s in q.segments])) for q in queries]
        assert labels(oracle, queries) == expected


def test_answers_carry_query_id_source_and_labeler():
    oracle = make_teacher("mistake")
    q = Query((seg([1.0, 2.0]), seg([0.0, 0.0])))
    (c,) = ask(oracle, [q])
    assert c.query_id == q.id and c.source == "synthetic" and c.labeler == "mistake"
    assert c.segment_ids == tuple(s.id for s in q.segments)
    assert isinstance(oracle, Oracle)


def test_submit_collect_pending():
    oracle = SyntheticOracle()
    queries = [Query((seg([1.0]), seg([2.0]))) for _ in range(3)]
    assert oracle.pending() == 0 and oracle.collect() == []
    oracle.submit(queries)
    assert oracle.pending() == 3
    got = oracle.collect(timeout=None)
    assert [c.query_id for c in got] == [q.id for q in queries] and oracle.pending() == 0
    oracle.close()
    with pytest.raises(RuntimeError, match="closed"):
        oracle.submit(queries)


def test_mistakes_flip_about_epsilon_of_clear_pairs():
    rng = np.random.default_rng(2)
    n, eps = 3000, 0.2
    pairs = [(seg(rng.uniform(0, 1, 5)), seg(rng.uniform(2, 3, 5))) for _ in range(n)]  # second is clearly better
    got = np.array(labels(SyntheticOracle(epsilon=eps, seed=3), [Query(p) for p in pairs]))
    assert set(got) <= {0, 1}
    assert abs((got == 0).mean() - eps) < binomial_tol(eps, n)


def test_close_returns_tie_under_equal_threshold():
    oracle = SyntheticOracle(equal_threshold=0.1)
    close = Query((seg([10.0]), seg([10.5])))  # gap 0.5 vs scale ~10 -> 0.05 <= 0.1
    clear = Query((seg([10.0]), seg([15.0])))
    three = Query((seg([10.0]), seg([10.4]), seg([2.0])))  # best two are close
    assert labels(oracle, [close, clear, three]) == [TIE, 1, TIE]


def test_exactly_equal_returns_tie_by_default_even_for_a_stochastic_teacher():
    # CartPole: every segment that survives pays 1 per step; these must be ties, not coin flips.
    for oracle in (SyntheticOracle(), make_teacher("stoc"), make_teacher("mistake")):
        queries = [Query((seg(np.ones(50)), seg(np.ones(50)))) for _ in range(20)]
        assert set(labels(oracle, queries)) == {TIE}


def test_a_segment_that_ends_early_loses_to_one_that_survives():
    r = np.r_[np.ones(30), np.zeros(20)].astype(np.float32)
    fell = Segment(
        id=next(_ids),
        obs=np.zeros((50, 3)),
        actions=np.zeros((50, 1)),
        true_rewards=r,
        length=30,
        terminated=True,
        env_id="T",
    )
    assert labels(SyntheticOracle(), [Query((seg(np.ones(50)), fell)), Query((fell, seg(np.ones(50))))]) == [0, 1]


def test_skip_threshold_skips_queries_whose_best_segment_is_poor():
    oracle = SyntheticOracle(skip_threshold=0.5)
    warmup = Query((seg([10.0]), seg([12.0])))  # scale 11
    poor = Query((seg([1.0]), seg([2.0])))  # scale (22 + 3) / 4 = 6.25; best 2 < 0.5 * 6.25
    good = Query((seg([1.0]), seg([9.0])))
    assert labels(oracle, [warmup, poor, good]) == [1, SKIP, 1]
    assert labels(SyntheticOracle(), [poor]) == [1]  # no threshold: never skips


def _pref_rate(scale_by: float, n: int = 3000) -> tuple[float, list[int]]:
    a, b = seg([1.0 * scale_by]), seg([2.0 * scale_by])  # scale = 1.5 * scale_by
    got = labels(SyntheticOracle(beta=1.0, seed=5), [Query((a, b)) for _ in range(n)])
    return float(np.mean(np.array(got) == 1)), got


def test_finite_beta_follows_softmax_of_relative_return_and_is_scale_invariant():
    n = 3000
    p_expected = 1.0 / (1.0 + math.exp(-(2.0 - 1.0) / 1.5))  # softmax(beta * value / scale), beta = 1
    rate, got = _pref_rate(1.0, n)
    rate100, got100 = _pref_rate(100.0, n)
    assert abs(rate - p_expected) < binomial_tol(p_expected, n)
    assert abs(rate100 - p_expected) < binomial_tol(p_expected, n)
    assert got == got100


def test_softmax_over_k_segments():
    n = 3000
    values = np.array([0.0, 1.0, 2.0])  # scale = 1
    oracle = SyntheticOracle(beta=2.0, seed=7)
    segs = [seg([v]) for v in values]
    got = np.array(labels(oracle, [Query(tuple(segs)) for _ in range(n)]))
    p = np.exp(2.0 * values) / np.exp(2.0 * values).sum()
    for i in range(3):
        assert abs((got == i).mean() - p[i]) < binomial_tol(p[i], n)


def test_myopic_teacher_weighs_late_steps_more():
    early = seg([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    late = seg([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    assert segment_value(late, 0.9) == pytest.approx(1.0 + 0.9)
    assert segment_value(early, 0.9) == pytest.approx(0.9**5 + 0.9**4)
    assert labels(SyntheticOracle(), [Query((late, early))]) == [TIE]
    assert labels(make_teacher("myopic"), [Query((late, early)), Query((early, late))]) == [0, 1]


def test_k4_queries_answered_with_index_0_to_3():
    rng = np.random.default_rng(8)
    queries = [Query(tuple(seg(rng.normal(size=4)) for _ in range(4))) for _ in range(400)]
    best = np.array([np.argmax([s.true_return for s in q.segments]) for q in queries])
    for kwargs in ({"beta": 1.0}, {"epsilon": 0.3}):
        got = np.array(labels(SyntheticOracle(seed=9, **kwargs), queries))
        assert set(got) == {0, 1, 2, 3}
    always_wrong = np.array(labels(SyntheticOracle(epsilon=1.0), queries))
    assert not np.any(always_wrong == best)  # a mistake is always a different index...
    for b in range(4):  # ...chosen uniformly among the other three
        others = always_wrong[best == b]
        assert set(others) == {0, 1, 2, 3} - {b}


def test_same_seed_same_labels():
    rng = np.random.default_rng(10)
    queries = [Query((seg(rng.normal(size=5)), seg(rng.normal(size=5)))) for _ in range(300)]
    kwargs = {"beta": 1.0, "epsilon": 0.1}
    first = labels(SyntheticOracle(seed=11, **kwargs), queries)
    assert first == labels(SyntheticOracle(seed=11, **kwargs), queries)
    assert first == labels(SyntheticOracle(seed=np.random.default_rng(11), **kwargs), queries)
    assert first != labels(SyntheticOracle(seed=12, **kwargs), queries)


def test_replay_oracle_remaps_label_to_query_order():
    a, b, c, d = seg([1.0]), seg([2.0]), seg([3.0]), seg([4.0])
    recorded = [
        Comparison(segment_ids=(a.id, b.id), label=0, source="human", labeler="ann"),
        Comparison(segment_ids=(b.id, c.id), label=TIE, source="human", labeler="bob"),
        Comparison(segment_ids=(a.id, b.id, c.id), label=2, source="human", labeler="ann"),
    ]
    oracle = ReplayOracle(recorded)
    queries = [
        Query((b, a)),  # a preferred, now at index 1
        Query((a, b)),
        Query((c, b)),
        Query((c, a, b)),  # c preferred, now at index 0
        Query((a, d)),  # never recorded
    ]
    got = ask(oracle, queries)
    assert [x.label for x in got] == [1, 0, TIE, 0, SKIP]
    assert [x.query_id for x in got] == [q.id for q in queries]
    assert {x.source for x in got} == {"replay"}
    assert got[0].labeler == "ann" and got[0].segment_ids == (b.id, a.id)


class _SlowOracle:
    """Answers one query per collect call, in reverse order; never answers if ``silent``."""

    def __init__(self, silent: bool = False) -> None:
        self.inner, self.silent, self.queue = SyntheticOracle(), silent, []

    def submit(self, queries):
        self.queue.extend(queries)

    def collect(self, timeout=0.0):
        if self.silent or not self.queue:
            return []
        return [self.inner.answer(self.queue.pop())]

    def pending(self):
        return len(self.queue)

    def close(self):
        pass


def test_ask_waits_for_every_answer_and_returns_them_in_query_order():
    queries = [Query((seg([float(i)]), seg([0.5]))) for i in range(4)]
    got = ask(_SlowOracle(), queries)
    assert [c.query_id for c in got] == [q.id for q in queries]
    assert [c.label for c in got] == [1, 0, 0, 0]
    with pytest.raises(TimeoutError, match="0 of 4"):
        ask(_SlowOracle(silent=True), queries, timeout=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": float("nan")}, "beta must be > 0"),
        ({"epsilon": 1.5}, r"epsilon .* \[0, 1\]"),
        ({"epsilon": -0.1}, r"epsilon .* \[0, 1\]"),
        ({"gamma": 0.0}, r"gamma must be in \(0, 1\]"),
        ({"gamma": 1.1}, r"gamma must be in \(0, 1\]"),
        ({"skip_threshold": -1.0}, "skip_threshold must be >= 0"),
        ({"equal_threshold": -0.1}, "equal_threshold must be >= 0"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticOracle(**kwargs)


def test_teacher_presets():
    assert set(TEACHERS) == {"oracle", "stoc", "mistake", "noisy", "skip", "myopic", "equal"}
    t = make_teacher("myopic", seed=3, epsilon=0.05)
    assert (t.gamma, t.epsilon, t.name) == (0.9, 0.05, "myopic")
    assert make_teacher("oracle", name="alice").name == "alice"
    with pytest.raises(ValueError, match=r"unknown teacher 'mistak'.*oracle, stoc.*did you mean 'mistake'\?"):
        make_teacher("mistak")
    with pytest.raises(ValueError, match="known teachers are") as e:
        make_teacher("zzzzzz")
    assert "did you mean" not in str(e.value)
