"""The grid's plots: true return vs steps, one panel per experiment, mean over seeds with a min–max band."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.bench.grid import Grid, _slug
from prefrl.bench.records import group_key
from prefrl.bench.summary import method_label


def plot_grid(grid: Grid, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``returns.png``: one panel per experiment, true return vs steps, one line per method (mean over seeds,
    min–max band); and the same panel alone as ``returns-NAME.png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    experiments = list(dict.fromkeys(j.experiment for j in grid.jobs))
    experiments = [e for e in experiments if any(r["experiment"] == e for r in rows)]
    if not experiments:
        return []
    written = []
    ncols = min(4, len(experiments))
    nrows = math.ceil(len(experiments) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.6 * nrows), dpi=120)
    FigureCanvasAgg(fig)
    for i, exp in enumerate(experiments):
        _panel(fig.add_subplot(nrows, ncols, i + 1), grid, rows, exp, legend=True)
    written.append(_save_figure(fig, out_dir / "returns.png"))
    for exp in experiments:
        fig = Figure(figsize=(6.0, 4.2), dpi=120)
        FigureCanvasAgg(fig)
        _panel(fig.add_subplot(), grid, rows, exp, legend=True)
        written.append(_save_figure(fig, out_dir / f"returns-{_slug(exp)}.png"))
    return written


def _panel(ax: Any, grid: Grid, rows: list[dict[str, Any]], exp: str, *, legend: bool) -> None:
    from prefrl.plots import COLORS, apply_style

    apply_style(ax)
    base = grid.baseline_of(exp)  # a variant's panel shows its baseline's true-reward line
    groups = list(dict.fromkeys(j.group for j in grid.jobs if j.experiment == exp or j.group[:2] == (base, "true")))
    samplers = {g[3] for g in groups if g[1] == "prefrl"}
    colors = itertools.cycle(COLORS)  # black is the true reward
    for g in groups:
        curves = _curves([r for r in rows if group_key(r) == g])
        if not curves:
            if g[1] != "true":
                next(colors)
            continue
        if g[1] == "true":
            color, name = "black", method_label(grid, g)
        else:
            color = next(colors)
            name = f"{g[2]} labels" + (f", {g[3]}" if len(samplers) > 1 else "")
        x, lo, mean, hi = _band(curves)
        if len(curves) > 1:
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
        seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
        ax.plot(x, mean, color=color, linewidth=1.8, marker="o" if len(x) <= 12 else None, markersize=3,
                label=name + seeds)  # fmt: skip
    env = next(j.env for j in grid.jobs if j.experiment == exp)
    ax.set_title(env if _slug(env) == exp or exp.lower() in env.lower() else f"{exp} ({env})", fontsize=10)
    ax.set_ylabel("true episode return")
    if legend and ax.lines:
        ax.legend(fontsize=7, loc="best", framealpha=0.85)


def _curves(rows: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    by_seed: dict[int, list[tuple[int, float]]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append((r["timesteps"], r["true_return"]))
    out = []
    for pts in by_seed.values():
        pts.sort()
        out.append((np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)))
    return out


def _band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Seeds on a common grid of steps (where all of them have data): x, min, mean, max."""
    from prefrl.plots import common_grid

    grid = common_grid([x for x, _ in curves])
    if not len(grid):  # seeds that share no steps yet: the longest alone
        x, y = max(curves, key=lambda c: c[0][-1])
        return x, y, y, y
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])  # (seeds, steps)
    return grid, ys.min(axis=0), ys.mean(axis=0), ys.max(axis=0)


def _save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
