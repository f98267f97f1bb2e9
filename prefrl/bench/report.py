"""Results of a grid: ``runs.csv`` (one row per run and evaluation point), the summary and the plots, and the
random policy's return that the normalized score starts from."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.bench.grid import Grid
from prefrl.bench.plots import plot_grid
from prefrl.bench.records import group_key, is_finished, read_record, write_records
from prefrl.bench.summary import write_summary
from prefrl.config import TrainConfig

RUNS_COLUMNS = [
    "experiment",
    "env",
    "method",
    "labels",
    "sampler",
    "seed",
    "timesteps",
    "true_return",
    "predicted_return",
    "labels_used",
    "wall_s",
]


def collect_rows(grid: Grid) -> list[dict[str, Any]]:
    """One row per run and evaluation point, from the runs' ``metrics.csv`` (finished or not), or from the record
    of a finished run whose directory is not here."""
    rows = []
    for job in grid.jobs:
        path = job.run.metrics_path
        if not path.exists():
            if is_finished(job):
                rows += [{k: math.nan if v is None else v for k, v in r.items()} for r in read_record(job)["rows"]]
            continue
        with path.open(newline="") as f:
            logged = list(csv.DictReader(f))
        merged: dict[float, dict[str, str]] = {}  # the final evaluation is a row of its own at the last chunk's steps
        for r in logged:
            merged.setdefault(_num(r.get("timesteps")), {}).update({k: v for k, v in r.items() if v not in ("", None)})
        for r in merged.values():
            ret = _num(r.get("eval/true_return"))
            if math.isnan(ret):
                continue
            rows.append(
                {
                    "experiment": job.experiment,
                    "env": job.env,
                    "method": job.method,
                    "labels": job.labels,
                    "sampler": job.sampler,
                    "seed": job.seed,
                    "timesteps": int(_num(r.get("timesteps"))),
                    "true_return": ret,
                    "predicted_return": _num(r.get("rollout/predicted_return")),
                    "labels_used": int(_num(r.get("labels/total"), 0.0)),
                    "wall_s": round(_num(r.get("wall_s")), 1),
                }
            )
    order = {j.group: i for i, j in reversed(list(enumerate(grid.jobs)))}
    rows.sort(key=lambda r: (order[group_key(r)], r["seed"], r["timesteps"]))
    return rows


def _num(cell: Any, default: float = math.nan) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return default


def write_results(grid: Grid) -> list[Path]:
    """The records of newly finished runs, ``runs.csv``, ``summary.md`` and the return plots, from whatever the
    runs have written so far."""
    out_dir = grid.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(grid)
    write_records(grid, rows)
    csv_path = out_dir / "runs.csv"
    tmp = csv_path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUNS_COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows)
    tmp.replace(csv_path)
    written = [csv_path, write_summary(grid, rows, out_dir / "summary.md", randoms=random_returns(grid, out_dir))]
    return written + plot_grid(grid, rows, out_dir)


def random_returns(grid: Grid, out_dir: Path, episodes: int = 20) -> dict[str, float]:
    """Mean return of a uniformly random policy per experiment (the 0 of the normalized score); cached."""
    path = out_dir / "random_returns.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    for job in grid.jobs:
        if job.experiment not in cache:
            cache[job.experiment] = random_return(job.config, episodes)
    path.write_text(json.dumps(cache, indent=1))
    return cache


def random_return(cfg: TrainConfig, episodes: int) -> float:
    """Mean true return of a uniformly random policy in ``cfg.env`` over ``episodes`` whole episodes (games, on
    Atari): the 0 of a normalized score."""
    from prefrl.make import make_vec_env

    env_cfg = dataclasses.replace(cfg.env, n_envs=1)
    venv = make_vec_env(env_cfg, seed=cfg.seed + 20_000)
    venv.action_space.seed(cfg.seed)
    venv.reset()
    returns: list[float] = []
    while len(returns) < episodes:
        _, _, dones, infos = venv.step(np.array([venv.action_space.sample()]))
        if dones[0] and "episode" in infos[0]:  # Atari: a lost life ends a training episode, not the game
            returns.append(float(infos[0]["episode"]["r"]))
    venv.close()
    return float(np.mean(returns))
