"""Data at the boundary: segments of behaviour, comparisons between them, and their durable store.

A :class:`Segment` is a fixed-length window of one episode. When the episode *terminates* inside the
window, the remaining steps are padding for an absorbing state: the environment pays nothing after
the end, and the reward model gives the absorbing state a reward of exactly zero. That makes "the
episode ended early" visible to both the oracle and the reward model, which is the whole signal in
tasks such as CartPole. Episodes cut by a time limit are never padded: what follows a truncation is
unknown, so such a partial window is dropped.

A :class:`Comparison` is one answer: the ids of the compared segments (2 for pairs, k for best-of-k)
and a label, which is the index of the preferred segment, :data:`TIE` or :data:`SKIP`.

:class:`ComparisonStore` keeps comparisons *and* the segments they refer to in one SQLite file,
committed the moment an answer is given. Segments are stored as ``.npz`` blobs, never pickle, so a
label file stays readable without this library.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefrl.io import atomic_write

TIE = -1
"""Label of a comparison whose segments are equally good (target ½ each in the loss)."""
SKIP = -2
"""Label of a comparison the oracle could not answer (excluded from the loss)."""

SOURCES = ("synthetic", "human", "replay")


class DataError(ValueError):
    """A segment, comparison or label file is malformed."""


@dataclass(frozen=True, eq=False)
class Segment:
    """A window of ``T`` steps of one episode.

    Attributes:
        id: unique within a run.
        obs: ``(T, *obs_shape)`` observation at which each action was taken.
        actions: ``(T, *act_shape)``.
        true_rewards: ``(T,)`` reward the environment paid; 0 on absorbing padding.
        length: number of real steps (``1..T``); steps ``length..T-1`` are absorbing padding.
        terminated: whether the episode terminated at step ``length - 1``.
        env_id: the environment this came from.
        episode: run-wide index of the episode.
        start: index, within the episode, of the segment's first step.
        states: optional ``(T, S)`` simulator state per step, to re-render the segment later.
        text: optional rendering of a text segment (prompt and continuation) for people.

    Examples:
        A 4-step window of an episode that terminated after its third step; the fourth step is absorbing
        padding, which pays nothing:

        >>> import numpy as np
        >>> from prefrl.data import Segment
        >>> seg = Segment(
        ...     id=0,
        ...     obs=np.zeros((4, 2), dtype=np.float32),
        ...     actions=np.zeros(4, dtype=np.int64),
        ...     true_rewards=np.array([1.0, 1.0, 1.0, 0.0]),
        ...     length=3,
        ...     terminated=True,
        ...     env_id="CartPole-v1",
        ... )
        >>> seg.T, seg.true_return, seg.mask.tolist()
        (4, 3.0, [1.0, 1.0, 1.0, 0.0])

        Only a terminated episode may be padded:

        >>> import dataclasses
        >>> dataclasses.replace(seg, terminated=False)
        Traceback (most recent call last):
        ...
        prefrl.data.DataError: segment 0: padded (3 of 4 steps real) but not terminated; ...
    """

    id: int
    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray
    length: int
    terminated: bool
    env_id: str
    episode: int = 0
    start: int = 0
    states: np.ndarray | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        T = len(self.obs)
        if T == 0:
            raise DataError(f"segment {self.id}: empty; a segment needs at least one step")
        for name in ("actions", "true_rewards"):
            if len(getattr(self, name)) != T:
                raise DataError(f"segment {self.id}: {name} has {len(getattr(self, name))} steps but obs has {T}")
        if self.true_rewards.ndim != 1:
            raise DataError(f"segment {self.id}: true_rewards must be 1-D, got shape {self.true_rewards.shape}")
        if not 1 <= self.length <= T:
            raise DataError(f"segment {self.id}: length {self.length} outside 1..{T}")
        if self.length < T and not self.terminated:
            raise DataError(
                f"segment {self.id}: padded ({self.length} of {T} steps real) but not terminated; "
                "only a terminated episode may be padded with its absorbing state"
            )
        if self.states is not None and len(self.states) != T:
            raise DataError(f"segment {self.id}: states has {len(self.states)} steps but obs has {T}")
        if not np.all(np.isfinite(self.true_rewards)):
            raise DataError(f"segment {self.id}: true_rewards contain NaN or inf; check the environment's reward")

    @property
    def T(self) -> int:
        return len(self.obs)

    @property
    def mask(self) -> np.ndarray:
        """``(T,)`` 1.0 on real steps, 0.0 on absorbing padding."""
        m = np.zeros(self.T, dtype=np.float32)
        m[: self.length] = 1.0
        return m

    @property
    def true_return(self) -> float:
        return float(self.true_rewards.sum())

    def to_npz_bytes(self) -> bytes:
        arrays = {"obs": self.obs, "actions": self.actions, "true_rewards": self.true_rewards}
        if self.states is not None:
            arrays["states"] = self.states
        meta = {
            "id": self.id,
            "length": self.length,
            "terminated": self.terminated,
            "env_id": self.env_id,
            "episode": self.episode,
            "start": self.start,
            "text": self.text,
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, blob: bytes) -> Segment:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            states = z["states"] if "states" in z.files else None
            return cls(obs=z["obs"], actions=z["actions"], true_rewards=z["true_rewards"], states=states, **meta)


def save_segments(path: Path, segments: Sequence[Segment]) -> None:
    """Write segments to one ``.npz`` (stacked arrays, no pickle); inverse of :func:`load_segments`.

    Deflated at level 1: a buffer of Atari frames shrinks tens of times at about 400 MB/s, where numpy's
    ``savez_compressed`` (level 6) takes three times as long for twice the ratio.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"n": np.array(len(segments))}
    if segments:
        s0 = segments[0]
        arrays |= {
            "id": np.array([s.id for s in segments], dtype=np.int64),
            "obs": np.stack([s.obs for s in segments]),
            "actions": np.stack([s.actions for s in segments]),
            "true_rewards": np.stack([s.true_rewards for s in segments]),
            "length": np.array([s.length for s in segments], dtype=np.int64),
            "terminated": np.array([s.terminated for s in segments]),
            "episode": np.array([s.episode for s in segments], dtype=np.int64),
            "start": np.array([s.start for s in segments], dtype=np.int64),
            "env_id": np.array([s.env_id for s in segments]),
        }
        if s0.states is not None and all(s.states is not None for s in segments):
            arrays["states"] = np.stack([s.states for s in segments])
    with (
        atomic_write(path, suffix=".tmp.npz") as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
    ):
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def load_segments(path: Path) -> list[Segment]:
    with np.load(Path(path), allow_pickle=False) as z:
        a = {name: z[name] for name in z.files}  # each member read (and inflated) once
    n = int(a["n"])
    states = a.get("states")
    return [
        Segment(
            id=int(a["id"][i]),
            obs=a["obs"][i],
            actions=a["actions"][i],
            true_rewards=a["true_rewards"][i],
            length=int(a["length"][i]),
            terminated=bool(a["terminated"][i]),
            episode=int(a["episode"][i]),
            start=int(a["start"][i]),
            env_id=str(a["env_id"][i]),
            states=None if states is None else states[i],
        )
        for i in range(n)
    ]


def new_query_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Query:
    """A question for an oracle: which of these segments is best?"""

    segments: tuple[Segment, ...]
    id: str = field(default_factory=new_query_id)

    def __post_init__(self) -> None:
        if len(self.segments) < 2:
            raise DataError(f"query {self.id}: needs at least 2 segments, got {len(self.segments)}")


@dataclass(frozen=True)
class Comparison:
    """One answer.

    Attributes:
        segment_ids: ids of the compared segments, 2 (pair) or k (best-of-k).
        label: index into ``segment_ids`` of the preferred segment, or :data:`TIE` / :data:`SKIP`.
        source: ``"synthetic"``, ``"human"`` or ``"replay"``.
        labeler: who answered (a teacher's name, or a person's).
        time: unix time of the answer.
        query_id: unique id; a repeated answer to the same query is stored once.

    Examples:
        >>> from prefrl.data import SKIP, TIE, Comparison
        >>> Comparison(segment_ids=(7, 3), label=1).k  # segment 3 is better
        2
        >>> Comparison((7, 3), TIE).label, Comparison((7, 3, 5, 1), SKIP, source="human", labeler="ada").k
        (-1, 4)
        >>> Comparison((7, 3), label=2)
        Traceback (most recent call last):
        ...
        prefrl.data.DataError: comparison ...: label 2 must be 0..1, TIE (-1) or SKIP (-2)
    """

    segment_ids: tuple[int, ...]
    label: int
    source: str = "synthetic"
    labeler: str = ""
    time: float = field(default_factory=time.time)
    query_id: str = field(default_factory=new_query_id)

    def __post_init__(self) -> None:
        k = len(self.segment_ids)
        if k < 2:
            raise DataError(f"comparison {self.query_id}: needs at least 2 segment ids, got {k}")
        if len(set(self.segment_ids)) != k:
            raise DataError(f"comparison {self.query_id}: a segment is compared with itself {self.segment_ids}")
        if not (self.label in (TIE, SKIP) or 0 <= self.label < k):
            raise DataError(
                f"comparison {self.query_id}: label {self.label} must be 0..{k - 1}, TIE ({TIE}) or SKIP ({SKIP})"
            )
        if self.source not in SOURCES:
            raise DataError(f"comparison {self.query_id}: source {self.source!r} is not one of {SOURCES}")

    @property
    def k(self) -> int:
        return len(self.segment_ids)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    env_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    start INTEGER NOT NULL,
    length INTEGER NOT NULL,
    terminated INTEGER NOT NULL,
    true_return REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL UNIQUE,
    segment_ids TEXT NOT NULL,
    label INTEGER NOT NULL,
    source TEXT NOT NULL,
    labeler TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ComparisonStore:
    """Comparisons and the segments they compare, in one SQLite file (WAL, committed per answer).

    Safe to share between threads of one process; several processes may open the same file.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from prefrl.data import Comparison, ComparisonStore, Segment
        >>> def seg(i, r):
        ...     return Segment(i, np.zeros((2, 1)), np.zeros(2), np.full(2, r), 2, terminated=False, env_id="Toy")
        >>> with tempfile.TemporaryDirectory() as tmp, ComparisonStore(Path(tmp) / "labels.sqlite") as store:
        ...     answer = Comparison((0, 1), label=1, labeler="ada")
        ...     store.add(answer, [seg(0, 0.0), seg(1, 1.0)])
        ...     store.add(answer)  # the same answer again (a retried request) is stored once
        ...     len(store), store.comparisons()[0].labeler, store.segments([1])[1].true_return
        True
        False
        (1, 'ada', 2.0)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DataError(
                f"{self.path} is not a readable label store ({e}); move it aside or point the run at another directory"
            ) from None
        self._lock = threading.Lock()
        self._segment_cache: dict[int, Segment] = {}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ComparisonStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- segments -----------------------------------------------------------------------------
    def add_segments(self, segments: Iterable[Segment]) -> None:
        self.add_many([], list(segments))

    def segments(self, ids: Iterable[int]) -> dict[int, Segment]:
        ids = list(dict.fromkeys(int(i) for i in ids))
        missing = [i for i in ids if i not in self._segment_cache]
        for chunk in range(0, len(missing), 500):
            part = missing[chunk : chunk + 500]
            q = f"SELECT id, data FROM segments WHERE id IN ({','.join('?' * len(part))})"
            with self._lock:
                rows = self._db.execute(q, part).fetchall()
            for sid, blob in rows:
                self._segment_cache[sid] = Segment.from_npz_bytes(blob)
        absent = [i for i in ids if i not in self._segment_cache]
        if absent:
            raise DataError(f"{self.path}: comparisons refer to segments {absent[:5]} that are not stored")
        return {i: self._segment_cache[i] for i in ids}

    def max_segment_id(self) -> int:
        with self._lock:
            (m,) = self._db.execute("SELECT COALESCE(MAX(id), -1) FROM segments").fetchone()
        return int(m)

    # -- comparisons --------------------------------------------------------------------------
    def add(self, comparison: Comparison, segments: Sequence[Segment] = ()) -> bool:
        """Commit one answer (and the segments it compares). Returns False if its query was already answered."""
        return self.add_many([comparison], segments) == 1

    def add_many(self, comparisons: Sequence[Comparison], segments: Sequence[Segment] = ()) -> int:
        seg_rows = [
            (s.id, s.env_id, s.episode, s.start, s.length, int(s.terminated), s.true_return, s.to_npz_bytes())
            for s in segments
        ]
        rows = [
            (c.query_id, json.dumps(list(c.segment_ids)), c.label, c.source, c.labeler, c.time) for c in comparisons
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?)", seg_rows)
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO comparisons (query_id, segment_ids, label, source, labeler, time) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def comparisons(self, last: int | None = None) -> list[Comparison]:
        """All answers in the order they were given (or only the ``last`` ones)."""
        q = "SELECT query_id, segment_ids, label, source, labeler, time FROM comparisons ORDER BY seq"
        with self._lock:
            rows = self._db.execute(q).fetchall()
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        return [
            Comparison(
                segment_ids=tuple(json.loads(ids)), label=label, source=source, labeler=labeler, time=t, query_id=qid
            )
            for qid, ids, label, source, labeler, t in rows
        ]

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM comparisons").fetchone()
        return int(n)

    def count(self, *, include_skipped: bool = True) -> int:
        if include_skipped:
            return len(self)
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM comparisons WHERE label != ?", (SKIP,)).fetchone()
        return int(n)
