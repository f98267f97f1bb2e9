"""Oracles: whoever answers "which of these segments is best?".

Every oracle follows one asynchronous interface, :class:`Oracle`: questions are handed over with
``submit`` and answers are picked up with ``collect`` whenever they are ready. A simulated teacher
answers at once; a person in the web labeler answers minutes later; the training loop does not
care which. :func:`ask` is the synchronous shortcut: submit, then wait for every answer.

:class:`SyntheticOracle` is the simulated teacher of B-Pref (Lee et al. 2021) with its five knobs
(rationality ``beta``, myopia ``gamma``, mistakes ``epsilon``, skipping and tie thresholds), on
pairs and on best-of-k queries. :data:`TEACHERS` names B-Pref's teachers; :func:`make_teacher`
builds one. :class:`ReplayOracle` answers from comparisons recorded earlier; :class:`HumanOracle` asks
people through the web labeler.
"""

from __future__ import annotations

import difflib
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from prefrl.data import SKIP, TIE, Comparison, ComparisonStore, Query, Segment

_SCALE_FLOOR = 1e-8
"""Smallest return scale; keeps the thresholds meaningful when every segment seen so far returned 0."""


@runtime_checkable
class Oracle(Protocol):
    """Answers queries, possibly later and in any order."""

    def submit(self, queries: Sequence[Query]) -> None:
        """Hand over questions; returns at once."""
        ...

    def collect(self, timeout: float | None = 0.0) -> list[Comparison]:
        """Answers ready so far. If none is ready but some are pending, wait up to ``timeout`` seconds
        (``None``: until one is) for at least one."""
        ...

    def pending(self) -> int:
        """Number of queries submitted whose answers have not been collected yet."""
        ...

    def close(self) -> None: ...


def ask(oracle: Oracle, queries: Sequence[Query], timeout: float | None = None) -> list[Comparison]:
    """Submit ``queries`` and collect until every one is answered.

    Returns the answers in the order of ``queries`` (followed by any answers to queries submitted
    earlier that were still uncollected). Raises :class:`TimeoutError` if ``timeout`` seconds pass first.
    """
    queries = list(queries)
    if not queries:
        return []
    order = {q.id: i for i, q in enumerate(queries)}
    if len(order) != len(queries):
        raise ValueError("ask: the same query id appears twice; build a new Query for each question")
    deadline = None if timeout is None else time.monotonic() + timeout
    oracle.submit(queries)
    answers: dict[str, Comparison] = {}
    others: list[Comparison] = []
    while len(answers) < len(queries):
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        got = oracle.collect(timeout=wait)
        for c in got:
            if c.query_id in order:
                answers[c.query_id] = c
            else:
                others.append(c)
        if len(answers) == len(queries):
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"ask: only {len(answers)} of {len(queries)} queries answered within {timeout:g} s; "
                "raise the timeout or collect the rest later with oracle.collect()"
            )
        if not got and oracle.pending() == 0:
            raise RuntimeError(
                f"ask: oracle {type(oracle).__name__} has nothing pending but answered only "
                f"{len(answers)} of {len(queries)} queries"
            )
    return sorted(answers.values(), key=lambda c: order[c.query_id]) + others


def segment_value(segment: Segment, gamma: float = 1.0) -> float:
    """Myopic discounted true return ``sum_t gamma**(T-1-t) * r_t``: later steps weigh more; gamma=1 is the return."""
    r = np.asarray(segment.true_rewards, dtype=np.float64)  # (T,)
    if gamma == 1.0:
        return float(r.sum())
    weights = gamma ** np.arange(len(r) - 1, -1, -1, dtype=np.float64)  # (T,) gamma^(T-1) .. gamma^0
    return float(weights @ r)


class _ReadyAnswers:
    """Answers computed at submit time, held until collected (for oracles that answer at once)."""

    def __init__(self) -> None:
        self._ready: deque[Comparison] = deque()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new oracle to ask more questions")

    def collect(self, timeout: float | None = 0.0) -> list[Comparison]:
        out = list(self._ready)
        self._ready.clear()
        return out

    def pending(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        self._closed = True


class SyntheticOracle(_ReadyAnswers):
    """A simulated teacher with B-Pref's knobs, for pairs and best-of-k queries.

    Each segment's value is its myopic discounted true return (see :func:`segment_value`). So that a
    knob means the same on every environment, thresholds and ``beta`` are relative to a *return
    scale*: the running mean of ``|value|`` over every segment shown so far, this query included.

    For each query, in order:

    1. skip: if ``skip_threshold`` is set and the best value is below ``skip_threshold * scale``,
       the answer is :data:`SKIP`. (B-Pref's rule; on tasks whose returns are all negative this skips
       every query for any threshold.)
    2. tie: if the best and second-best values differ by at most ``equal_threshold * scale``, the
       answer is :data:`TIE`. At the default 0.0, exactly equal values are ties (e.g. CartPole
       segments that all survive).
    3. choice: ``beta=inf`` picks the best; a finite ``beta`` samples from ``softmax(beta * value / scale)``.
    4. mistake: with probability ``epsilon``, the choice is replaced by another index, uniformly.

    Args:
        beta: rationality (> 0); ``inf`` is a perfectly rational teacher.
        gamma: myopia discount in (0, 1]; 1 weighs every step equally.
        epsilon: probability of a mistake, in [0, 1].
        skip_threshold: relative return below which a query is skipped; ``None`` never skips.
        equal_threshold: relative return gap at or below which the best two tie (>= 0).
        seed: seed or generator; the same queries in the same order get the same labels.
        name: the ``labeler`` recorded in each comparison.

    Examples:
        >>> import numpy as np
        >>> from prefrl.data import Query, Segment
        >>> from prefrl.oracles import SyntheticOracle, ask, make_teacher
        >>> def seg(i, rewards):
        ...     r = np.asarray(rewards, dtype=float)
        ...     return Segment(i, np.zeros((len(r), 1)), np.zeros(len(r)), r, len(r), False, "Toy")
        >>> steady, late, idle, also_idle = seg(0, [1, 1, 1]), seg(1, [0, 0, 2.8]), seg(2, [0, 0, 0]), seg(3, [0, 0, 0])
        >>> queries = [Query((idle, steady)), Query((idle, also_idle)), Query((idle, late, steady))]
        >>> [c.label for c in ask(SyntheticOracle(), queries)]  # index of the best; -1 is a tie
        [1, -1, 2]

        A myopic teacher weighs the end of a segment more (B-Pref's ``gamma = 0.9``):

        >>> [c.label for c in ask(make_teacher("myopic"), [Query((steady, late))])]
        [1]
    """

    def __init__(
        self,
        *,
        beta: float = math.inf,
        gamma: float = 1.0,
        epsilon: float = 0.0,
        skip_threshold: float | None = None,
        equal_threshold: float = 0.0,
        seed: int | np.random.Generator = 0,
        name: str = "synthetic",
    ) -> None:
        super().__init__()
        if not beta > 0:  # also rejects NaN
            raise ValueError(f"beta must be > 0 (inf for a perfectly rational teacher), got {beta}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] (1 weighs every step equally), got {gamma}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon is a mistake probability and must be in [0, 1], got {epsilon}")
        if skip_threshold is not None and not (0.0 <= skip_threshold < math.inf):
            raise ValueError(f"skip_threshold must be >= 0 (or None to never skip), got {skip_threshold}")
        if not 0.0 <= equal_threshold < math.inf:
            raise ValueError(
                f"equal_threshold must be >= 0 (0 makes only exactly equal returns ties), got {equal_threshold}"
            )
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.skip_threshold = None if skip_threshold is None else float(skip_threshold)
        self.equal_threshold = float(equal_threshold)
        self.name = name
        self._rng = np.random.default_rng(seed)
        self._abs_sum = 0.0  # running sum of |value| over every segment shown
        self._count = 0

    def __repr__(self) -> str:
        return (
            f"SyntheticOracle(beta={self.beta}, gamma={self.gamma}, epsilon={self.epsilon}, "
            f"skip_threshold={self.skip_threshold}, equal_threshold={self.equal_threshold}, name={self.name!r})"
        )

    @property
    def scale(self) -> float:
        """Current return scale: mean ``|value|`` of the segments shown so far (floored)."""
        return max(self._abs_sum / self._count, _SCALE_FLOOR) if self._count else _SCALE_FLOOR

    def submit(self, queries: Sequence[Query]) -> None:
        self._check_open()
        for q in queries:
            self._ready.append(self.answer(q))

    def answer(self, query: Query) -> Comparison:
        """Label one query now (advances the return scale and the random stream)."""
        values = np.array([segment_value(s, self.gamma) for s in query.segments])  # (k,)
        self._abs_sum += float(np.abs(values).sum())
        self._count += len(values)
        return Comparison(
            segment_ids=tuple(s.id for s in query.segments),
            label=self._label(values / self.scale),
            source="synthetic",
            labeler=self.name,
            query_id=query.id,
        )

    def _label(self, v: np.ndarray) -> int:
        """Label for relative values ``v`` (k,) = value / scale."""
        k = len(v)
        top2 = np.sort(v)[-2:]  # (2,) second best, best
        if self.skip_threshold is not None and top2[1] < self.skip_threshold:
            return SKIP
        if top2[1] - top2[0] <= self.equal_threshold:
            return TIE
        if math.isinf(self.beta):
            choice = int(np.argmax(v))
        else:
            logits = self.beta * v
            p = np.exp(logits - logits.max())
            choice = int(self._rng.choice(k, p=p / p.sum()))
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            other = int(self._rng.integers(k - 1))
            choice = other + (other >= choice)  # uniform over the k-1 other indices
        return choice


TEACHERS: dict[str, dict[str, Any]] = {
    "oracle": {},
    "stoc": {"beta": 1.0},
    "noisy": {"beta": 1.0},  # B-Pref's code calls the stochastic teacher "noisy", its paper "stoc"
    "mistake": {"epsilon": 0.1},
    "skip": {"skip_threshold": 0.1},
    "myopic": {"gamma": 0.9},
    "equal": {"equal_threshold": 0.1},
}
"""B-Pref's simulated teachers, as :class:`SyntheticOracle` keyword arguments (the rest at defaults)."""


def make_teacher(name: str, /, **overrides: Any) -> SyntheticOracle:
    """The named B-Pref teacher from :data:`TEACHERS`, with any keyword argument overridden (its name too)."""
    if name not in TEACHERS:
        close = difflib.get_close_matches(name, TEACHERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown teacher {name!r}: known teachers are {', '.join(TEACHERS)}{hint}")
    kwargs = {**TEACHERS[name], "name": name, **overrides}
    return SyntheticOracle(**kwargs)


class ReplayOracle(_ReadyAnswers):
    """Answers from recorded comparisons of the same segments (in any order); otherwise :data:`SKIP`.

    When several recorded comparisons cover the same set of segments, the last one wins.

    Examples:
        >>> import numpy as np
        >>> from prefrl.data import Comparison, Query, Segment
        >>> from prefrl.oracles import ReplayOracle, ask
        >>> a, b, c = (Segment(i, np.zeros((2, 1)), np.zeros(2), np.zeros(2), 2, False, "Toy") for i in range(3))
        >>> replay = ReplayOracle([Comparison((0, 1), label=1, labeler="ada")])  # ada preferred segment 1
        >>> [(x.label, x.labeler) for x in ask(replay, [Query((b, a)), Query((a, c))])]  # -2: never asked
        [(0, 'ada'), (-2, 'replay')]
    """

    def __init__(self, comparisons: Sequence[Comparison]) -> None:
        super().__init__()
        self._recorded: dict[frozenset[int], Comparison] = {frozenset(c.segment_ids): c for c in comparisons}

    def __len__(self) -> int:
        return len(self._recorded)

    def submit(self, queries: Sequence[Query]) -> None:
        self._check_open()
        for q in queries:
            self._ready.append(self.answer(q))

    def answer(self, query: Query) -> Comparison:
        ids = tuple(s.id for s in query.segments)
        recorded = self._recorded.get(frozenset(ids))
        if recorded is None:
            label, labeler = SKIP, "replay"
        else:
            old = recorded.label
            label = old if old in (TIE, SKIP) else ids.index(recorded.segment_ids[old])
            labeler = recorded.labeler
        return Comparison(segment_ids=ids, label=label, source="replay", labeler=labeler, query_id=query.id)


class HumanOracle:
    """People answering in the web labeler (:mod:`prefrl.labeler`): questions go to its queue, answers come back.

    ``submit`` queues the questions (and the segments they show) in the label store, committed at once;
    people answer through the labeler's HTTP API, which commits each answer as a comparison; ``collect``
    picks up the answers to this oracle's questions. Questions left unanswered by an earlier process on the
    same store count as submitted, so a resumed run waits for them too.

    Args:
        queue: a :class:`prefrl.labeler.store.LabelQueue` (or its SQLAlchemy URL / SQLite path).
        poll_s: how often ``collect`` looks for new answers while it waits.
    """

    def __init__(self, queue: Any, *, poll_s: float = 0.2) -> None:
        from prefrl.labeler import require_labeler

        require_labeler()  # refuses, with the install command, when the labeler extra is missing
        from prefrl.labeler.store import LabelQueue

        self.queue = queue if isinstance(queue, LabelQueue) else LabelQueue(queue)
        self.poll_s = poll_s
        self._waiting: set[str] = set(self.queue.open_query_ids())
        self._seq = 0
        self._closed = False

    def submit(self, queries: Sequence[Query]) -> None:
        if self._closed:
            raise RuntimeError("HumanOracle is closed; create a new oracle to ask more questions")
        self.queue.add_queries(queries)
        self._waiting |= {q.id for q in queries}

    def collect(self, timeout: float | None = 0.0) -> list[Comparison]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = []
            for seq, c in self.queue.answers_since(self._seq):
                self._seq = seq
                if c.query_id in self._waiting:
                    self._waiting.discard(c.query_id)
                    out.append(c)
            if out or not self._waiting or (deadline is not None and time.monotonic() >= deadline):
                return out
            time.sleep(self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - time.monotonic())))

    def pending(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        self._closed = True


def collect_answers(oracle: Oracle, labels: ComparisonStore, *, timeout: float = 0.0) -> int:
    """Commit the answers that are ready; returns how many were new."""
    return labels.add_many(oracle.collect(timeout=timeout))


def wait_for_oracle(oracle: Oracle, labels: ComparisonStore, *, max_pending: int) -> None:
    """An asynchronous oracle (a person) that fell behind pauses the agent rather than let it run on a stale reward."""
    while oracle.pending() > max_pending:
        collect_answers(oracle, labels, timeout=1.0)
