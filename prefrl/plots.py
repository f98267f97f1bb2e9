"""Plots of a training run, and of several methods side by side.

A run directory holds ``metrics.csv`` (one row per training chunk, namespaced keys such as
``rollout/true_return``; always ``timesteps`` and ``wall_s``; any cell may be empty) and, optionally,
``segments.csv`` (``true_return,predicted_return`` per buffer segment at the last reward fit).
:func:`plot_run` draws the run's curves into ``run_dir/plots/``; :func:`plot_comparison` draws one
curve per method, averaged over seeds.

Figures are drawn with matplotlib's Agg canvas directly, never through pyplot: nothing opens a
window and the global backend of the importing program is left alone.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from prefrl.io import atomic_write

DPI = 120
_SIZE = (7.0, 4.2)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")

_AXIS_LABELS = {
    "timesteps": "environment steps",
    "labels/total": "labels",
    "rollout/true_return": "true episode return",
    "rollout/predicted_return": "predicted episode return",
    "eval/true_return": "true episode return (eval)",
    "reward/train_acc": "train accuracy",
    "reward/val_acc": "validation accuracy",
    "reward/train_loss": "train loss",
    "reward/val_loss": "validation loss",
}


# -- reading ----------------------------------------------------------------------------------------
def read_csv_columns(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV file as float arrays, one entry per row; empty or unparsable cells are NaN."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}
        rows = [row for row in reader if row]
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        columns[name.strip()] = np.array([_to_float(row[j]) if j < len(row) else math.nan for row in rows])
    return columns


def _to_float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan  # empty cell, or a row cut short while being written


def _series(columns: Mapping[str, np.ndarray], key: str, x: str = "timesteps") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` rows where both are present, sorted by ``x``; empty if a column is absent."""
    if key not in columns or x not in columns:
        return np.empty(0), np.empty(0)
    xs, ys = columns[x], columns[key]
    ok = np.isfinite(xs) & np.isfinite(ys)
    order = np.argsort(xs[ok], kind="stable")
    return xs[ok][order], ys[ok][order]


# -- statistics -------------------------------------------------------------------------------------
def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN if either input is constant or there are fewer than 2 points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denom if denom > 0 else math.nan


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(_ranks(np.asarray(x)), _ranks(np.asarray(y)))


# -- drawing helpers --------------------------------------------------------------------------------
def _figure(nrows: int = 1, height: float = _SIZE[1]) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(_SIZE[0], height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    for ax in axes:
        apply_style(ax)
    return fig, axes


def apply_style(ax: Axes, *, steps_axis: bool = True) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    if steps_axis:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel(_AXIS_LABELS["timesteps"])


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, **kwargs) -> None:
    """A line, with point markers when there are few enough points to see them."""
    if len(x) <= 40:
        kwargs.setdefault("marker", "o")
        kwargs.setdefault("markersize", 3.5)
    ax.plot(x, y, linewidth=1.8, **kwargs)


def _save(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically (a reader never sees half a file)."""
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# -- one run ----------------------------------------------------------------------------------------
def plot_run(run_dir: Path) -> list[Path]:
    """Draw a run's curves into ``run_dir/plots/`` and return the files written.

    ``returns.png`` (true and predicted episode return), ``labels.png``, ``reward_accuracy.png`` and
    ``segments.png`` (predicted vs true segment return); a plot whose data is absent is skipped.
    """
    run_dir = Path(run_dir)
    metrics_path, segments_path = run_dir / "metrics.csv", run_dir / "segments.csv"
    if not metrics_path.exists() and not segments_path.exists():
        raise FileNotFoundError(f"{run_dir}: neither metrics.csv nor segments.csv; is this a run directory?")
    metrics = read_csv_columns(metrics_path) if metrics_path.exists() else {}
    if metrics and "timesteps" not in metrics:
        raise ValueError(f"{metrics_path}: no 'timesteps' column (columns: {', '.join(metrics)})")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    name = run_dir.resolve().name
    written = [
        _plot_returns(metrics, out_dir / "returns.png", name),
        _plot_labels(metrics, out_dir / "labels.png", name),
        _plot_accuracy(metrics, out_dir / "reward_accuracy.png", name),
    ]
    if segments_path.exists():
        written.append(_plot_segments(read_csv_columns(segments_path), out_dir / "segments.png", name))
    return [p for p in written if p is not None]


def _plot_returns(metrics: Mapping[str, np.ndarray], path: Path, name: str) -> Path | None:
    true = _series(metrics, "rollout/true_return")
    evals = _series(metrics, "eval/true_return")
    pred = _series(metrics, "rollout/predicted_return")
    if not (len(true[0]) or len(evals[0]) or len(pred[0])):
        return None
    fig, (ax,) = _figure()
    has_true = bool(len(true[0]) or len(evals[0]))
    if len(true[0]):
        _line(ax, *true, color=COLORS[0], label="true return (training episodes)")
    if len(evals[0]):
        _line(ax, *evals, color=COLORS[2], linestyle="none", marker="D", markersize=5, label="true return (eval)")
    if has_true:
        ax.set_ylabel("true episode return", color=COLORS[0])
    ax_pred = ax
    if len(pred[0]):
        if has_true:  # the learned reward has its own arbitrary scale: give it its own axis
            ax_pred = ax.twinx()
            ax_pred.spines["top"].set_visible(False)
        _line(ax_pred, *pred, color=COLORS[1], linestyle="--", label="predicted return (learned reward)")
        ax_pred.set_ylabel("predicted episode return", color=COLORS[1])
    handles = ax.get_legend_handles_labels()[0]
    if ax_pred is not ax:
        handles += ax_pred.get_legend_handles_labels()[0]
    ax_pred.legend(handles=handles, loc="best", framealpha=0.85, fontsize=9)  # on the top axes, above both lines
    ax.set_title(f"{name}: episode return")
    return _save(fig, path)


def _plot_labels(metrics: Mapping[str, np.ndarray], path: Path, name: str) -> Path | None:
    x, y = _series(metrics, "labels/total")
    if not len(x):
        return None
    fig, (ax,) = _figure()
    _line(ax, x, y, color=COLORS[4], label="labels (cumulative)")
    ax.set_ylabel("labels")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", framealpha=0.85, fontsize=9)
    ax.set_title(f"{name}: labels collected ({int(y[-1])} total)")
    return _save(fig, path)


def _plot_accuracy(metrics: Mapping[str, np.ndarray], path: Path, name: str) -> Path | None:
    acc = {k: _series(metrics, k) for k in ("reward/train_acc", "reward/val_acc")}
    loss = {k: _series(metrics, k) for k in ("reward/train_loss", "reward/val_loss")}
    if not any(len(x) for x, _ in acc.values()):
        return None
    has_loss = any(len(x) for x, _ in loss.values())
    fig, axes = _figure(nrows=2 if has_loss else 1, height=6.0 if has_loss else _SIZE[1])
    ax = axes[0]
    for (key, (x, y)), color in zip(acc.items(), COLORS, strict=False):
        if len(x):
            _line(ax, x, y, color=color, label=_AXIS_LABELS[key])
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1.2, label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("preference accuracy")
    ax.legend(loc="lower right", framealpha=0.85, fontsize=9)
    ax.set_title(f"{name}: reward model")
    if has_loss:
        ax.set_xlabel("")
        for (key, (x, y)), color in zip(loss.items(), COLORS, strict=False):
            if len(x):
                _line(axes[1], x, y, color=color, linestyle="--", label=_AXIS_LABELS[key])
        axes[1].set_ylabel("loss")
        axes[1].legend(loc="upper right", framealpha=0.85, fontsize=9)
    return _save(fig, path)


def _plot_segments(segments: Mapping[str, np.ndarray], path: Path, name: str) -> Path | None:
    x, y = _series(segments, "predicted_return", x="true_return")
    if not len(x):
        return None
    fig = Figure(figsize=(5.6, 5.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    apply_style(ax, steps_axis=False)
    alpha = float(np.clip(30.0 / math.sqrt(len(x)), 0.15, 0.8))
    ax.scatter(x, y, s=14, alpha=alpha, color=COLORS[0], edgecolors="none", label="segment")
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + intercept, color=COLORS[3], linewidth=1.5, label="least-squares fit")
        ax.legend(loc="upper left", framealpha=0.85, fontsize=9)
    ax.set_xlabel("true segment return")
    ax.set_ylabel("predicted segment return")
    r, rho = pearson(x, y), spearman(x, y)
    ax.set_title(f"{name}: segments (n = {len(x)})\nPearson r = {_fmt(r)}, Spearman ρ = {_fmt(rho)}")
    return _save(fig, path)


def _fmt(r: float) -> str:
    return "n/a" if math.isnan(r) else f"{r:.3f}"


# -- several methods --------------------------------------------------------------------------------
def plot_comparison(
    runs: Mapping[str, Path | Sequence[Path]],
    out: Path,
    *,
    title: str,
    key: str = "rollout/true_return",
) -> Path:
    """One curve of ``key`` vs timesteps per named method, e.g. ``{"PPO, true reward": [seed dirs]}``.

    A method with several run directories (seeds) is drawn as their mean with a shaded min–max
    band, on a common grid of timesteps (the union of the seeds' timesteps where all seeds have
    data; each seed is interpolated linearly). A run directory without data for ``key`` is skipped
    with a warning.
    """
    out = Path(out)
    fig, (ax,) = _figure()
    drawn = 0
    for i, (name, dirs) in enumerate(runs.items()):
        dirs = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
        curves = [c for c in (_run_curve(d, key) for d in dirs) if c is not None]
        if not curves:
            warnings.warn(f"plot_comparison: no {key!r} data for {name!r}; left out of {out.name}", stacklevel=2)
            continue
        color = COLORS[i % len(COLORS)]
        if len(curves) == 1:
            _line(ax, *curves[0], color=color, label=name)
            drawn += 1
            continue
        grid = common_grid([x for x, _ in curves])
        if not len(grid):
            warnings.warn(f"plot_comparison: the seeds of {name!r} share no timesteps; left out", stacklevel=2)
            continue
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])  # (seeds, grid)
        ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.2, linewidth=0)
        _line(ax, grid, ys.mean(axis=0), color=color, label=f"{name} (mean of {len(curves)}, min–max)")
        drawn += 1
    if not drawn:
        raise ValueError(f"plot_comparison: no run has data for {key!r}; nothing to plot for {out}")
    ax.set_ylabel(_AXIS_LABELS.get(key, key))
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.85, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out)


def _run_curve(run_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / "metrics.csv"
    if not path.exists():
        warnings.warn(f"plot_comparison: {path} does not exist; run skipped", stacklevel=3)
        return None
    x, y = _series(read_csv_columns(path), key)
    if not len(x):
        warnings.warn(f"plot_comparison: {path} has no values for {key!r}; run skipped", stacklevel=3)
        return None
    return x, y


def common_grid(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Union of the runs' timesteps within the range every run covers."""
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.unique(np.concatenate(xs))
    return grid[(grid >= lo) & (grid <= hi)]
