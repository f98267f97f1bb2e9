"""``summary.md``: a table of statistics over seeds (:func:`summarize`), then its markdown (:func:`render_summary`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.bench.grid import Grid
from prefrl.bench.records import group_key, is_finished, machine, read_record

LATE_EVALS = 3  # the summary's late ratio: each run's mean over its last this many evaluations


@dataclass(frozen=True)
class SummaryRow:
    """One setting of a grid (experiment, method, label budget, sampler) over its finished seeds: a row of the
    summary's table. The statistics are None until a seed finishes (and ratios until the baseline's do)."""

    experiment: str
    env: str
    method: str
    """``PPO, true reward`` (the experiment's own algorithm on the env's reward) or ``prefrl``."""
    labels: int
    """Label budget; 0 for the true reward."""
    sampler: str
    """Query sampler; empty for the true reward."""
    seeds_finished: int
    seeds_total: int
    steps: tuple[int, ...]
    """The distinct lengths of the finished seeds' runs, ascending."""
    mean: float | None
    """Final true return, mean over the finished seeds."""
    std: float | None
    worst: float | None
    """The lowest seed's final true return."""
    ratio: float | None
    """``mean`` / the baseline's, over the seeds both finished at the same steps (where the baseline's is > 0)."""
    late_ratio: float | None
    """The same with each run's mean over its last :data:`LATE_EVALS` evaluations."""
    normalized: float | None
    """(return − random policy) / (true-reward agent − random policy)."""
    goal: str | None
    """Which of the grid's goals are met or missed (None: the grid sets none, or a true-reward row)."""
    wall: float | None
    """Mean training time of the finished seeds, seconds."""


def summarize(grid: Grid, rows: list[dict[str, Any]], *, randoms: dict[str, float]) -> list[SummaryRow]:
    """The summary's statistics, one row per setting of the grid in the grid's order: final true return over
    seeds against the true-reward runs of the same seeds."""
    final, late = _final_returns(grid, rows)
    goal_col = any(grid.goals.values())
    table = []
    for g in dict.fromkeys(j.group for j in grid.jobs):
        exp, method, labels, sampler = g
        env = next(j.env for j in grid.jobs if j.group == g)
        n_seeds = sum(j.group == g for j in grid.jobs)
        mine = final.get(g, {})
        if not mine:
            table.append(SummaryRow(exp, env, method_label(grid, g), labels, sampler, 0, n_seeds, (), *[None] * 8))
            continue
        vals = [v for _, v in mine.values()]
        base_group = (grid.baseline_of(exp), "true", 0, "")
        base = final.get(base_group, {})
        seeds = [s for s in mine if s in base and base[s][0] == mine[s][0]]
        ratio = late_ratio = norm = None
        m_ratio: float | str = "pending"  # until the true-reward runs of the same seeds finish
        if seeds and method != "true":
            m, b = np.mean([mine[s][1] for s in seeds]), np.mean([base[s][1] for s in seeds])
            m_ratio = m / b if b > 0 else "undefined (the true-reward return is ≤ 0)"
            ratio = float(m / b) if b > 0 else None
            late_b = np.mean([late[base_group][s] for s in seeds])
            late_ratio = float(np.mean([late[g][s] for s in seeds]) / late_b) if late_b > 0 else None
            rnd = randoms.get(exp)
            norm = float((m - rnd) / (b - rnd)) if rnd is not None and b != rnd else None
        wall_by_seed = {r["seed"]: r["wall_s"] for r in rows if group_key(r) == g and r["seed"] in mine}  # the last
        goal = None
        if goal_col and method != "true":
            goal = _goal(grid.goals.get(exp, {}), m_ratio, float(np.mean(vals)), float(np.min(vals)))
        steps = tuple(sorted({t for t, _ in mine.values()}))
        table.append(
            SummaryRow(
                exp, env, method_label(grid, g), labels, sampler, len(mine), n_seeds, steps,
                float(np.mean(vals)), float(np.std(vals)), float(np.min(vals)), ratio, late_ratio, norm, goal,
                float(np.mean(list(wall_by_seed.values()))),
            )
        )  # fmt: skip
    return table


def _final_returns(grid: Grid, rows: list[dict[str, Any]]) -> tuple[dict, dict]:
    """Of the finished runs, by group and seed: (timesteps, final true return), and the mean true return of the
    last :data:`LATE_EVALS` evaluations."""
    final: dict[tuple, dict[int, tuple[int, float]]] = {}  # group -> seed -> (timesteps, return) of finished runs
    late: dict[tuple, dict[int, float]] = {}  # group -> seed -> mean return of its last LATE_EVALS evaluations
    for job in grid.jobs:
        if is_finished(job):
            last = [r for r in rows if group_key(r) == job.group and r["seed"] == job.seed]
            if last:
                final.setdefault(job.group, {})[job.seed] = (last[-1]["timesteps"], last[-1]["true_return"])
                late.setdefault(job.group, {})[job.seed] = float(
                    np.mean([r["true_return"] for r in last[-LATE_EVALS:]])
                )
    return final, late


def render_summary(
    grid: Grid, table: list[SummaryRow], rows: list[dict[str, Any]], *, randoms: dict[str, float]
) -> str:
    """The markdown of ``summary.md``: how the grid stands, what the columns mean, ``table``, the random policy's
    returns, the unfinished runs' latest evaluations and the grid's notes."""
    finished = sum(is_finished(j) for j in grid.jobs)
    goal_col = any(grid.goals.values())
    goal_text = [
        "Goal: what the grid file asks of the preference runs (ratio ≥ goal_ratio, mean final return ≥ goal_return,",
        "every seed's final return ≥ goal_worst), met or missed by the seeds finished so far.",
    ]
    lines = [
        f"# Grid `{grid.name}`: true return of agents trained from synthetic preferences and on the true reward",
        "",
        f"Machine: {_ran_on(grid)}tables written on {machine()}. Generated by `prefrl bench {_display(grid.path)}`.",
        "",
        f"Runs finished: {finished} of {len(grid.jobs)}"
        + (" (the grid is not done; running the same command again resumes it)." if finished < len(grid.jobs) else "."),
        "",
        "Final true return: mean of the last evaluation's episodes per seed (the policy acts as the runs'",
        "`eval_policy` says: by default deterministically, and sampling on Atari); mean ± std over seeds, and the",
        "lowest seed's (worst seed).",
        "Ratio: mean final return / mean final return of the same agent on the true reward, same seeds and steps",
        "(shown when that baseline is positive). Late ratio: the same with each run's mean over its last"
        f" {LATE_EVALS} evaluations,",
        "less at the mercy of where one evaluation falls in a policy's late swings (goals use the final return).",
        "Normalized: (return − random policy) / (true-reward agent − random policy).",
        *(goal_text if goal_col else []),
        "",
        "| experiment | env | method | labels | sampler | seeds | steps | final true return | worst seed | ratio "
        + "| late ratio | normalized "
        + ("| goal " if goal_col else "")
        + "| mean wall s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if goal_col else "") + "---:|",
        *(_table_line(r, goal_col=goal_col) for r in table),
    ]
    lines += ["", "Random policy: " + ", ".join(f"{e} {v:.1f}" for e, v in randoms.items()), ""]
    lines += _part_way_lines(grid, rows)
    if grid.notes:
        lines += ["## Notes", ""]
        lines += [grid.notes[""], ""] if "" in grid.notes else []
        lines += [f"**{exp}**: {text}\n" for exp, text in grid.notes.items() if exp]
    return "\n".join(lines)


def _table_line(r: SummaryRow, *, goal_col: bool) -> str:
    """One row of the summary's table; ``—`` where there is no number (yet)."""
    steps = "/".join(_steps(t) for t in r.steps) or "—"
    final = f"{r.mean:.1f} ± {r.std:.1f}" if r.mean is not None and r.std is not None else "—"
    goal = f"{r.goal or '—'} | " if goal_col else ""
    return (
        f"| {r.experiment} | {r.env} | {r.method} | {r.labels or '—'} | {r.sampler or '—'} | "
        f"{r.seeds_finished}/{r.seeds_total} | {steps} | {final} | {_num(r.worst, '.1f')} | {_num(r.ratio, '.2f')} | "
        f"{_num(r.late_ratio, '.2f')} | {_num(r.normalized, '.2f')} | {goal}{_num(r.wall, '.0f')} |"
    )


def _num(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def write_summary(grid: Grid, rows: list[dict[str, Any]], path: Path, *, randoms: dict[str, float]) -> Path:
    """``summary.md``: final true return per setting (mean ± std over seeds) against the true-reward runs of the
    same seeds (:func:`summarize`, rendered by :func:`render_summary`)."""
    text = render_summary(grid, summarize(grid, rows, randoms=randoms), rows, randoms=randoms)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _ran_on(grid: Grid) -> str:
    """Where and at which commits the finished runs ran, by their records (``""`` before any has one): a grid
    that takes days may finish its runs on other machines and commits than the one writing its tables."""
    commits: dict[str, list[str]] = {}  # machine -> the commit of each run recorded on it
    for job in grid.jobs:
        if not job.record.exists():
            continue
        record = read_record(job)
        where = str(record.get("machine", "")).rsplit(", commit ", 1)[0] or "a machine not recorded"
        commits.setdefault(where, []).append(str(record.get("commit", "unknown")))
    if not commits:
        return ""
    parts = []
    for where, cs in commits.items():
        distinct = list(dict.fromkeys(cs))
        runs = f"{len(cs)} run{'s' if len(cs) > 1 else ''}"
        parts.append(f"{where} ({runs} at commit{'s' if len(distinct) > 1 else ''} {', '.join(distinct)})")
    return "the finished runs ran on " + "; ".join(parts) + "; "


def _part_way_lines(grid: Grid, rows: list[dict[str, Any]]) -> list[str]:
    """A table of the unfinished runs' latest evaluations, beside the true-reward run of the same seed at the same
    steps: where a grid that takes days stands before its final table has anything to show."""
    by_run: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault((*group_key(r), r["seed"]), []).append(r)
    lines = []
    for job in grid.jobs:
        mine = by_run.get((*job.group, job.seed))
        if is_finished(job) or not mine:
            continue
        last = mine[-1]
        base = by_run.get((grid.baseline_of(job.experiment), "true", 0, "", job.seed), [])
        at = [b["true_return"] for b in base if b["timesteps"] == last["timesteps"]]
        labels = f"{last['labels_used']:,}" if job.method != "true" else "—"
        lines.append(
            f"| {job.name} | {_steps(last['timesteps'])} of {_steps(job.config.total_timesteps)} | {labels} | "
            f"{last['true_return']:.1f} | {f'{at[0]:.1f}' if at and job.method != 'true' else '—'} |"
        )
    if not lines:
        return []
    return [
        "## Runs part-way",
        "",
        "Latest evaluation of each unfinished run (true return, as above) and, for a preference run, that of the",
        "true-reward run of the same seed at the same steps.",
        "",
        "| run | evaluated at | labels | true return | true-reward run there |",
        "|---|---:|---:|---:|---:|",
        *lines,
        "",
    ]


def _goal(goal: dict[str, float], ratio: float | str, final: float, worst: float) -> str:
    """``met``/``missed`` for each goal the grid sets an experiment (``ratio`` says why when there is none):
    ``final`` is the mean final return over seeds, ``worst`` the lowest seed's."""
    parts = []
    if "goal_ratio" in goal:
        want = goal["goal_ratio"]
        state = ratio if isinstance(ratio, str) else "met" if ratio >= want else "missed"
        parts.append(f"ratio ≥ {want:g}: {state}")
    if "goal_return" in goal:
        want = goal["goal_return"]
        parts.append(f"return ≥ {want:g}: " + ("met" if final >= want else "missed"))
    if "goal_worst" in goal:
        want = goal["goal_worst"]
        parts.append(f"every seed ≥ {want:g}: " + ("met" if worst >= want else "missed"))
    return "; ".join(parts) or "—"


def method_label(grid: Grid, group: tuple[str, str, int, str]) -> str:
    """``A2C, true reward`` (the experiment's own algorithm) or ``prefrl``."""
    if group[1] != "true":
        return "prefrl"
    return f"{next(j.config.agent.algo for j in grid.jobs if j.group == group)}, true reward"


def _steps(t: int) -> str:
    return f"{t / 1e6:g}M" if t >= 1_000_000 else f"{t / 1e3:g}k" if t >= 1000 else str(t)


def _display(path: Path) -> str:
    try:  # not resolved: a grid named through a symbolic link (benchmarks/grids/) is shown by that path
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return path.name
