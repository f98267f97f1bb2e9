"""A run's labels out of the run, and back into another one: ``prefrl export RUN --format csv|npz``.

- **npz** (one file, no pickle, readable with ``numpy.load`` alone): every comparison and every segment it
  compares. Comparison arrays: ``query_id`` (N,) str, ``segment_ids`` (N, k_max) int64 padded with -1,
  ``label`` (N,) int64 (index into that row's segment ids; -1 equally good, -2 can't tell), ``source``,
  ``labeler`` (N,) str, ``time`` (N,) float64 unix seconds. Segment arrays, stacked and padded in time to the
  longest segment: ``segment_id`` (S,), ``segment_T`` (S,) steps stored, ``segment_obs`` (S, T_max, *obs_shape),
  ``segment_actions`` (S, T_max, *act_shape), ``segment_true_rewards`` (S, T_max), ``segment_length``,
  ``segment_terminated``, ``segment_episode``, ``segment_start``, ``segment_env_id``, ``segment_text``
  ('' when none) and, when any segment has them, ``segment_states`` (S, T_max, state_dim) with
  ``segment_has_states`` (S,) bool.
  ``format`` names the layout (``prefrl-labels-1``).
- **csv** (for spreadsheets; carries no segment data, so it cannot be replayed): one row per comparison with
  the query id, the compared segment ids, the label, the preferred segment id, source, labeler, time
  (unix and ISO 8601 UTC) and the segments' true returns, ``;``-separated where a row has several.

:func:`import_labels` puts an npz export into another run's label store (see ``oracle.kind = "replay"``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prefrl.data import SKIP, TIE, Comparison, ComparisonStore, DataError, Segment
from prefrl.io import atomic_write

FORMAT = "prefrl-labels-1"
FORMATS = ("csv", "npz")
REPLAY_ID_BASE = 1 << 40
"""Imported segments are renumbered from here, far above any id a run gives its own segments."""


def read_run(run_path: Path) -> tuple[list[Comparison], dict[int, Segment]]:
    """Every comparison in a run's ``labels.sqlite`` and the segments they compare."""
    path = Path(run_path) / "labels.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{run_path}: no labels.sqlite; is this a run directory?")
    with ComparisonStore(path) as store:
        comparisons = store.comparisons()
        segments = store.segments(i for c in comparisons for i in c.segment_ids)
    return comparisons, segments


def export_run(run_path: Path, *, fmt: str, out: Path | None = None) -> tuple[Path, int]:
    """Write a run's labels as ``fmt`` to ``out`` (default ``RUN/labels.FMT``); returns the path and the count.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from prefrl.data import Comparison, ComparisonStore, Segment
        >>> from prefrl.export import export_run, read_npz
        >>> segs = [Segment(i, np.zeros((3, 2)), np.zeros(3), np.full(3, float(i)), 3, False, "Toy") for i in (0, 1)]
        >>> with tempfile.TemporaryDirectory() as run:
        ...     with ComparisonStore(Path(run) / "labels.sqlite") as store:
        ...         _ = store.add(Comparison((0, 1), label=1, labeler="ada"), segs)
        ...     path, n = export_run(Path(run), fmt="npz")
        ...     comparisons, segments = read_npz(path)  # what a replay run imports
        ...     path.name, n, comparisons[0].labeler, comparisons[0].label, segments[1].true_return
        ('labels.npz', 1, 'ada', 1, 3.0)
    """
    if fmt not in FORMATS:
        raise DataError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    comparisons, segments = read_run(run_path)
    out = Path(out) if out is not None else Path(run_path) / f"labels.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_npz if fmt == "npz" else write_csv)(out, comparisons, segments)
    return out, len(comparisons)


def write_csv(path: Path, comparisons: Sequence[Comparison], segments: dict[int, Segment]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["query_id", "segment_ids", "label", "preferred", "source", "labeler", "time", "time_iso", "true_returns"]
        )
        for c in comparisons:
            preferred = {TIE: "tie", SKIP: "skip"}.get(c.label)
            if preferred is None:
                preferred = str(c.segment_ids[c.label])
            w.writerow(
                [
                    c.query_id,
                    ";".join(str(i) for i in c.segment_ids),
                    c.label,
                    preferred,
                    c.source,
                    c.labeler,
                    repr(float(c.time)),
                    dt.datetime.fromtimestamp(c.time, dt.UTC).isoformat(timespec="milliseconds"),
                    ";".join(f"{segments[i].true_return:.6g}" for i in c.segment_ids),
                ]
            )


def write_npz(path: Path, comparisons: Sequence[Comparison], segments: dict[int, Segment]) -> None:
    k_max = max((c.k for c in comparisons), default=2)
    ids = np.full((len(comparisons), k_max), -1, dtype=np.int64)  # (N, k_max), -1 pads pairs among k-sets
    for row, c in enumerate(comparisons):
        ids[row, : c.k] = c.segment_ids
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "query_id": np.array([c.query_id for c in comparisons], dtype=str),
        "segment_ids": ids,
        "label": np.array([c.label for c in comparisons], dtype=np.int64),
        "source": np.array([c.source for c in comparisons], dtype=str),
        "labeler": np.array([c.labeler for c in comparisons], dtype=str),
        "time": np.array([c.time for c in comparisons], dtype=np.float64),
    }
    arrays |= _stack_segments(list(segments.values()))
    with atomic_write(path, suffix=".tmp.npz") as tmp:  # np.savez_compressed appends .npz to a path without it
        np.savez_compressed(tmp, **arrays)


def _stack_segments(segs: list[Segment]) -> dict[str, np.ndarray]:
    out = {
        "segment_id": np.array([s.id for s in segs], dtype=np.int64),
        "segment_T": np.array([s.T for s in segs], dtype=np.int64),
        "segment_length": np.array([s.length for s in segs], dtype=np.int64),
        "segment_terminated": np.array([s.terminated for s in segs], dtype=bool),
        "segment_episode": np.array([s.episode for s in segs], dtype=np.int64),
        "segment_start": np.array([s.start for s in segs], dtype=np.int64),
        "segment_env_id": np.array([s.env_id for s in segs], dtype=str),
        "segment_text": np.array([s.text or "" for s in segs], dtype=str),
    }
    if not segs:
        return out
    T_max = max(s.T for s in segs)
    fields = ["obs", "actions", "true_rewards"]
    if any(s.states is not None for s in segs):
        fields.append("states")
        out["segment_has_states"] = np.array([s.states is not None for s in segs], dtype=bool)
    for name in fields:
        parts = [np.asarray(getattr(s, name)) for s in segs if getattr(s, name) is not None]
        if name == "states":  # segments without states get zeros, marked by segment_has_states
            parts = [
                np.asarray(s.states) if s.states is not None else np.zeros((s.T, *parts[0].shape[1:])) for s in segs
            ]
        inner = {p.shape[1:] for p in parts}
        if len(inner) != 1:
            raise DataError(f"segments have different {name} shapes {sorted(inner)}; cannot stack them in one file")
        stacked = np.zeros((len(segs), T_max, *inner.pop()), dtype=np.result_type(*parts))  # (S, T_max, ...)
        for j, p in enumerate(parts):
            stacked[j, : len(p)] = p
        out[f"segment_{name}"] = stacked
    return out


def read_npz(path: Path) -> tuple[list[Comparison], dict[int, Segment]]:
    """The comparisons and segments of an npz export (inverse of :func:`write_npz`)."""
    path = Path(path)
    if path.suffix == ".csv":
        raise DataError(
            f"{path}: a csv export carries no segments; replay an npz export (prefrl export RUN --format npz)"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such label export; make one with `prefrl export RUN --format npz`"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: not an npz label export ({e}); make one with `prefrl export RUN --format npz`"
        ) from None
    with z:
        if "format" not in z.files or str(z["format"]) != FORMAT:
            raise DataError(f"{path}: not a {FORMAT} export; make one with `prefrl export RUN --format npz`")
        comparisons = [
            Comparison(
                segment_ids=tuple(int(i) for i in row if i >= 0),
                label=int(label),
                source=str(source),
                labeler=str(labeler),
                time=float(t),
                query_id=str(qid),
            )
            for qid, row, label, source, labeler, t in zip(
                z["query_id"], z["segment_ids"], z["label"], z["source"], z["labeler"], z["time"], strict=True
            )
        ]
        segments = {}
        has_states = "segment_states" in z.files
        for j, sid in enumerate(z["segment_id"]):
            T = int(z["segment_T"][j])
            text = str(z["segment_text"][j])
            segments[int(sid)] = Segment(
                id=int(sid),
                obs=z["segment_obs"][j, :T],
                actions=z["segment_actions"][j, :T],
                true_rewards=z["segment_true_rewards"][j, :T],
                length=int(z["segment_length"][j]),
                terminated=bool(z["segment_terminated"][j]),
                env_id=str(z["segment_env_id"][j]),
                episode=int(z["segment_episode"][j]),
                start=int(z["segment_start"][j]),
                states=z["segment_states"][j, :T] if has_states and z["segment_has_states"][j] else None,
                text=text or None,
            )
    missing = {i for c in comparisons for i in c.segment_ids} - set(segments)
    if missing:
        raise DataError(f"{path}: comparisons refer to segments {sorted(missing)[:5]} the file does not hold")
    return comparisons, segments


def import_labels(path: Path, store: ComparisonStore) -> list[Comparison]:
    """Put the comparisons of the npz export at ``path`` (and their segments) into ``store``, as ``replay``
    comparisons. Segments are renumbered from :data:`REPLAY_ID_BASE` up, so they never collide with the
    segments the importing run records; importing the same file twice adds nothing. Returns the comparisons
    as stored."""
    comparisons, segments = read_npz(path)
    new_id = {old: REPLAY_ID_BASE + j for j, old in enumerate(sorted(segments))}
    renumbered = [dataclasses.replace(s, id=new_id[s.id]) for s in segments.values()]
    imported = [
        Comparison(
            segment_ids=tuple(new_id[i] for i in c.segment_ids),
            label=c.label,
            source="replay",
            labeler=c.labeler,
            time=c.time,
            query_id=c.query_id,
        )
        for c in comparisons
    ]
    store.add_many(imported, renumbered)
    return imported
