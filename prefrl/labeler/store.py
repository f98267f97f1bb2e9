"""The queue of questions waiting for people, and their answers, in one database (SQLAlchemy Core).

The tables sit beside :class:`prefrl.data.ComparisonStore`'s in the run's ``labels.sqlite`` (WAL, every
answer committed before the HTTP response), so an answer *is* a row of ``comparisons`` the training
loop fits to. Any SQLAlchemy URL works the same way (e.g. ``postgresql+psycopg://...`` for a team).

- ``queries``: one row per question, oldest first; a *lease* keeps a question shown to one labeler
  (a browser session) from being shown to another until the lease expires.
- ``answers``: every answer ever given, keyed by a client-generated id (so a retried request counts
  once), with labeler name, browser session and time; an undone answer is kept, marked undone.
- ``comparisons`` / ``segments``: the same tables as :class:`~prefrl.data.ComparisonStore`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from prefrl.config import ConfigError
from prefrl.data import SKIP, TIE, Comparison, DataError, Query, Segment

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's INTEGER is 64-bit already
meta = sa.MetaData()
segments_t = sa.Table(
    "segments",
    meta,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=False),
    sa.Column("env_id", sa.Text, nullable=False),
    sa.Column("episode", sa.Integer, nullable=False),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("length", sa.Integer, nullable=False),
    sa.Column("terminated", sa.Integer, nullable=False),
    sa.Column("true_return", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
comparisons_t = sa.Table(
    "comparisons",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("query_id", sa.Text, nullable=False, unique=True),
    sa.Column("segment_ids", sa.Text, nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("labeler", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sqlite_autoincrement=True,
)
queries_t = sa.Table(
    "queries",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("segment_ids", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("answered", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_until", sa.Float, nullable=False, default=0.0),
    sa.Index("queries_open", "answered", "seq"),
    sqlite_autoincrement=True,
)
answers_t = sa.Table(
    "answers",
    meta,
    sa.Column("answer_id", sa.Text, primary_key=True),
    sa.Column("query_id", sa.Text, nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("labeler", sa.Text, nullable=False),
    sa.Column("session", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("undone", sa.Float),
    sa.Index("answers_session", "session", "time"),
    sa.Index("answers_time", "time"),
)


class Conflict(DataError):
    """An answer that cannot be taken (its question was answered by someone else, or its id was reused)."""


@dataclass(frozen=True)
class OpenQuery:
    id: str
    segment_ids: tuple[int, ...]


def database_url(path_or_url: str | Path) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file."""
    s = str(path_or_url)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


class LabelQueue:
    """Questions waiting for people and the answers they give; safe to share between threads and processes.

    Args:
        url: SQLAlchemy URL or a path to a SQLite file (created with its tables if missing).
        lease_s: how long a question shown to one labeler is held back from the others.
    """

    def __init__(self, url: str | Path, *, lease_s: float = 120.0) -> None:
        self.url = database_url(url)
        self.lease_s = float(lease_s)
        self.engine, self.shown = _engine(self.url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        # SQLite takes one writer at a time; queueing threads here beats spinning on the busy timeout.
        self._write_lock = threading.Lock() if self.sqlite else _NoLock()
        try:
            with self._write_lock:
                meta.create_all(self.engine)
        except sa.exc.OperationalError as e:
            self.engine.dispose()
            reason = str(e.orig).strip().splitlines()[0] if e.orig else type(e).__name__
            hint = (
                "check that its directory exists and is writable"
                if self.sqlite
                else "check the host, port, user, password and database name (the database must exist)"
            )
            raise ConfigError(f"{self.shown}: cannot open the label store ({reason}); {hint}") from None
        except sa.exc.DatabaseError as e:
            self.engine.dispose()
            raise DataError(
                f"{self.shown}: not a usable label store ({e.orig}); move it aside or use another"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    def _write(self, *, durable: bool = True):
        """One committed transaction, serialized within the process on SQLite. ``durable=False`` (a lease: losing
        one to a power cut costs nothing) skips waiting for the disk; it is still safe from a killed process."""
        tx = _Tx(self.engine.execution_options(write=True, durable=durable), self._write_lock)
        if not durable and not self.sqlite:
            tx.first = "SET LOCAL synchronous_commit TO OFF"
        return tx

    # -- the training side ----------------------------------------------------------------------
    def add_queries(self, queries: Sequence[Query]) -> None:
        """Queue questions (and store the segments they show), committed before returning."""
        now = time.time()
        segs = {s.id: s for q in queries for s in q.segments}
        with self._write() as conn:
            have = set()
            ids = list(segs)
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                have |= set(conn.scalars(sa.select(segments_t.c.id).where(segments_t.c.id.in_(part))))
            rows = [_segment_row(s) for sid, s in segs.items() if sid not in have]
            if rows:
                conn.execute(segments_t.insert(), rows)
            known = set()
            qids = [q.id for q in queries]
            for i in range(0, len(qids), 500):
                part = qids[i : i + 500]
                known |= set(conn.scalars(sa.select(queries_t.c.id).where(queries_t.c.id.in_(part))))
            new = [
                {"id": q.id, "segment_ids": json.dumps([s.id for s in q.segments]), "created": now, "answered": 0}
                for q in queries
                if q.id not in known
            ]
            if new:
                conn.execute(queries_t.insert(), new)

    def is_empty(self) -> bool:
        """No segment and no question stored yet (a fresh store)."""
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(segments_t.c.id).limit(1)) is None and (
                conn.scalar(sa.select(queries_t.c.id).limit(1)) is None
            )

    def open_query_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(queries_t.c.id).where(queries_t.c.answered == 0)))

    def answers_since(self, seq: int) -> list[tuple[int, Comparison]]:
        """``(seq, comparison)`` of every comparison stored after ``seq``, oldest first."""
        c = comparisons_t.c
        q = sa.select(c.seq, c.query_id, c.segment_ids, c.label, c.source, c.labeler, c.time)
        with self.engine.connect() as conn:
            rows = conn.execute(q.where(c.seq > seq).order_by(c.seq)).all()
        return [
            (s, Comparison(tuple(json.loads(ids)), label, source=src, labeler=who, time=t, query_id=qid))
            for s, qid, ids, label, src, who, t in rows
        ]

    # -- the labeler side -------------------------------------------------------------------------
    def segment(self, segment_id: int) -> Segment:
        with self.engine.connect() as conn:
            blob = conn.scalar(sa.select(segments_t.c.data).where(segments_t.c.id == int(segment_id)))
        if blob is None:
            raise KeyError(segment_id)
        return Segment.from_npz_bytes(blob)

    def has_segment(self, segment_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(segments_t.c.id).where(segments_t.c.id == int(segment_id))) is not None

    def lease_next(self, session: str, *, now: float | None = None) -> OpenQuery | None:
        """The question for ``session``: the one it already holds, else the oldest free one (leased to it)."""
        now = time.time() if now is None else now
        q = queries_t.c
        with self._write(durable=False) as conn:
            row = conn.execute(
                sa.select(q.id, q.segment_ids)
                .where(q.answered == 0, q.lease_owner == session, q.lease_until > now)
                .order_by(q.seq)
                .limit(1)
            ).first()
            if row is None:
                row = conn.execute(
                    sa.select(q.id, q.segment_ids)
                    .where(q.answered == 0, q.lease_until <= now)
                    .order_by(q.seq)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
            if row is None:
                return None
            conn.execute(
                queries_t.update().where(q.id == row.id).values(lease_owner=session, lease_until=now + self.lease_s)
            )
        return OpenQuery(row.id, tuple(json.loads(row.segment_ids)))

    def upcoming(self, n: int, *, now: float | None = None) -> list[OpenQuery]:
        """The next ``n`` free questions (for rendering their clips ahead of time)."""
        now = time.time() if now is None else now
        q = queries_t.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(q.id, q.segment_ids).where(q.answered == 0, q.lease_until <= now).order_by(q.seq).limit(n)
            ).all()
        return [OpenQuery(r.id, tuple(json.loads(r.segment_ids))) for r in rows]

    def answer(self, *, answer_id: str, query_id: str, label: int, labeler: str, session: str) -> bool:
        """Store one answer as a comparison, committed before returning. Returns False for a repeat of
        ``answer_id`` (already stored); raises :class:`Conflict` if the question is unknown or answered."""
        now = time.time()
        try:
            return self._answer(answer_id, query_id, label, labeler, session, now)
        except sa.exc.IntegrityError:
            # another request took the same answer id or question at the same moment (Postgres; SQLite serializes)
            with self.engine.connect() as conn:
                prior = conn.scalar(sa.select(answers_t.c.query_id).where(answers_t.c.answer_id == answer_id))
            if prior == query_id:
                return False
            raise Conflict(f"question {query_id} was answered at the same moment by another request") from None

    def _answer(self, answer_id: str, query_id: str, label: int, labeler: str, session: str, now: float) -> bool:
        q = queries_t.c
        with self._write() as conn:
            # the question's row is locked first, so concurrent answers to it queue up (FOR UPDATE; no-op on SQLite)
            row = conn.execute(sa.select(q.segment_ids, q.answered).where(q.id == query_id).with_for_update()).first()
            prior = conn.execute(sa.select(answers_t.c.query_id).where(answers_t.c.answer_id == answer_id)).first()
            if prior is not None:
                if prior.query_id != query_id:
                    raise Conflict(f"answer id {answer_id} was already used for another question")
                return False
            if row is None:
                raise Conflict(f"no question {query_id}")
            if row.answered:
                raise Conflict(f"question {query_id} is already answered")
            ids = json.loads(row.segment_ids)
            if not (label in (TIE, SKIP) or 0 <= label < len(ids)):
                raise Conflict(f"label {label} must be 0..{len(ids) - 1}, {TIE} (equal) or {SKIP} (can't tell)")
            conn.execute(
                answers_t.insert().values(
                    answer_id=answer_id, query_id=query_id, label=label, labeler=labeler, session=session, time=now
                )
            )
            # a comparison left behind by an undone answer gives way to this one
            conn.execute(comparisons_t.delete().where(comparisons_t.c.query_id == query_id))
            conn.execute(
                comparisons_t.insert().values(
                    query_id=query_id,
                    segment_ids=row.segment_ids,
                    label=label,
                    source="human",
                    labeler=labeler,
                    time=now,
                )
            )
            conn.execute(queries_t.update().where(q.id == query_id).values(answered=1, lease_owner=None))
        return True

    def undo(self, session: str) -> OpenQuery | None:
        """Take back ``session``'s last answer: its comparison is removed, the answer kept (marked undone), and
        the question leased back to ``session``. Returns that question, or None if nothing is left to undo."""
        now = time.time()
        a = answers_t.c
        with self._write() as conn:
            last = conn.execute(
                sa.select(a.answer_id, a.query_id)
                .where(a.session == session, a.undone.is_(None))
                .order_by(a.time.desc())
                .limit(1)
                .with_for_update()
            ).first()
            if last is None:
                return None
            conn.execute(answers_t.update().where(a.answer_id == last.answer_id).values(undone=now))
            conn.execute(comparisons_t.delete().where(comparisons_t.c.query_id == last.query_id))
            conn.execute(
                queries_t.update()
                .where(queries_t.c.id == last.query_id)
                .values(answered=0, lease_owner=session, lease_until=now + self.lease_s)
            )
            ids = conn.scalar(sa.select(queries_t.c.segment_ids).where(queries_t.c.id == last.query_id))
        return OpenQuery(last.query_id, tuple(json.loads(ids)))

    def progress(self, session: str | None = None) -> dict[str, int]:
        """Answers of ``session``, all comparisons, open questions, and answers in the last hour."""
        now = time.time()
        a = answers_t.c
        live = a.undone.is_(None)
        with self.engine.connect() as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(comparisons_t))
            queue = conn.scalar(sa.select(sa.func.count()).select_from(queries_t).where(queries_t.c.answered == 0))
            hour = conn.scalar(sa.select(sa.func.count()).select_from(answers_t).where(live, a.time > now - 3600))
            mine = 0
            if session:
                mine = conn.scalar(sa.select(sa.func.count()).select_from(answers_t).where(live, a.session == session))
        return {"session": int(mine), "total": int(total), "queue": int(queue), "last_hour": int(hour)}


def _engine(url: str) -> tuple[sa.Engine, str]:
    """The engine for ``url`` and the URL as it may be shown (password hidden); refuses what cannot work."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"{url!r} is not a database URL; give a SQLAlchemy URL such as "
            "postgresql+psycopg://user:password@host:5432/labels, or a SQLite file path"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = sa.create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False})
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"{shown}: SQLAlchemy knows no database or driver '{parsed.drivername}'; "
            "for Postgres use postgresql+psycopg://user:password@host:5432/labels"
        ) from None
    except ImportError as e:
        hint = "; for Postgres: pip install 'prefrl[postgres]' and use postgresql+psycopg://..."
        raise ConfigError(
            f"{shown}: the database driver for '{parsed.drivername}' is not installed (no module {e.name}){hint}"
        ) from None
    if engine.dialect.is_async:
        engine.dispose()
        raise ConfigError(f"{shown}: '{parsed.drivername}' is an asyncio driver; use a synchronous one, e.g. psycopg")
    return engine, shown


def _segment_row(s: Segment) -> dict:
    return {
        "id": s.id,
        "env_id": s.env_id,
        "episode": s.episode,
        "start": s.start,
        "length": s.length,
        "terminated": int(s.terminated),
        "true_return": s.true_return,
        "data": s.to_npz_bytes(),
    }


def _sqlite_begin(conn: sa.Connection) -> None:
    # writers take the write lock up front (no lock upgrade, no deadlock); readers never wait for writers (WAL)
    options = conn.get_execution_options()
    if options.get("write"):
        # FULL: the commit waits for the disk (an answer survives a power cut); NORMAL: the WAL reaches the OS,
        # which survives a killed process, and the disk at the next FULL commit or checkpoint
        conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if options.get('durable', True) else 'NORMAL'}")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves (no lock upgrades, no deadlock)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Tx:
    def __init__(self, engine: sa.Engine, lock) -> None:
        self._engine, self._lock = engine, lock
        self.first: str | None = None  # a statement to run first in the transaction

    def __enter__(self) -> sa.Connection:
        self._lock.__enter__()
        try:
            self._ctx = self._engine.begin()
            conn = self._ctx.__enter__()
            if self.first:
                conn.exec_driver_sql(self.first)
            return conn
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        try:
            self._ctx.__exit__(*exc)
        finally:
            self._lock.__exit__(None, None, None)
