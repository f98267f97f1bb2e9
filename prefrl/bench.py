"""Grids of runs: environments × methods (true reward, prefrl at each label budget and sampler) × seeds.

A grid file names experiments and what to vary; every cell of the grid is an ordinary run directory
(``prefrl plot RUN`` and ``prefrl train --resume RUN`` work on it). Runs execute in a local process
pool, or as tasks on a Ray cluster; either way each one is :func:`run_job`. Rerunning a grid skips the
finished runs and resumes the interrupted ones from their checkpoints; a true-reward run the grid now wants
longer goes on from its last one.

Each finished run also leaves a small record in the results, ``OUT/finished/RUN.json`` (its config, result
and evaluation rows, and the commit it finished on). Commit the results directory with those records and a
fresh checkout, without the run directories, carries on with the runs still missing: recorded runs are
skipped and keep their rows in the table and plots, as long as the grid still gives them the same config.

```toml
# benchmarks/grids/example.toml
name = "example"                      # results in benchmarks/results/example/, runs in benchmarks/runs/example/
seeds = [0, 1, 2]
labels = [350, 700]                   # one prefrl method per budget ...
samplers = ["disagreement"]           # ... and per sampler
true_reward = true                    # and the same agent on the environment's own reward beside them
timesteps = 1_000_000                 # every run's total_timesteps (0 or absent: each experiment's own)
eval_every = 100_000                  # evaluation points (default: a tenth of the run)
eval_episodes = 10
set = ["reward.epochs=10"]            # --set overrides for every run
goal_ratio = 0.9                      # the summary says whether prefrl reaches 0.9x the true-reward return ...
goal_return = 3000                    # ... and this final true return (either or both; any experiment may differ)
notes = "Text for the summary."       # e.g. why a goal is missed (an experiment's own notes go under its name)

[[experiments]]
experiment = "hopper"                 # experiments/hopper.toml (or a path; relative to this file or the cwd)
labels = [700, 1400]                  # any of the keys above, for this experiment only

[[experiments]]
env = "CartPole-v1"                   # or an env id with the default config
set = ["env.n_envs=8"]

[[experiments]]
experiment = "hopper"                 # a variant of the preference runs (an ablation) ...
name = "hopper-standardized"
set = ["reward.standardize_inputs=true"]
baseline = "hopper"                   # ... measured against that experiment's true-reward runs, not run again
```

Results (rewritten whenever a run finishes) in ``OUT/``: ``finished/`` (the records above), ``runs.csv`` (one
row per run and evaluation point), ``summary.md`` (final true return, ratio and normalized score against the
true-reward runs of the same seeds; the unfinished runs' latest evaluations) and ``returns.png`` (one panel
per experiment; true return vs steps, mean over seeds with a min–max band), plus one ``returns-NAME.png`` per
experiment.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import itertools
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.config import ConfigError, TrainConfig, dumps_config, load_config, loads_config, to_dict

LATE_EVALS = 3  # the summary's late ratio: each run's mean over its last this many evaluations

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

# Keys of a grid file (top level) and of an [[experiments]] entry, with their types.
_VARIED = {"seeds": list, "labels": list, "samplers": list, "true_reward": bool, "timesteps": int, "set": list}
_EVAL = {"eval_every": int, "eval_episodes": int}
_REPORT = {"goal_ratio": float, "goal_return": float, "goal_worst": float, "notes": str}
_TOP = {"name": str, "experiments": list, **_VARIED, **_EVAL, **_REPORT}
_EXPERIMENT = {"experiment": str, "env": str, "name": str, "baseline": str, **_VARIED, **_EVAL, **_REPORT}
_DEFAULTS: dict[str, Any] = {
    "seeds": [0],
    "labels": [],
    "samplers": ["disagreement"],
    "true_reward": True,
    "timesteps": 0,
    "set": [],
    "eval_every": 0,
    "eval_episodes": 10,
}


@dataclass(frozen=True)
class Job:
    """One cell of a grid: one method on one experiment with one seed, in its own run directory."""

    experiment: str
    """The experiment's name in the grid (a panel of the plots)."""
    env: str
    method: str
    """``true`` (the agent on the env's reward) or ``prefrl`` (learned from synthetic preferences)."""
    labels: int
    """Label budget; 0 for ``true``."""
    sampler: str
    """Query sampler; empty for ``true``."""
    seed: int
    run_dir: Path
    config: TrainConfig
    record: Path
    """Where the results keep this run's record once it has finished (``OUT/finished/RUN.json``)."""

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def group(self) -> tuple[str, str, int, str]:
        """Seeds of one group are averaged: (experiment, method, labels, sampler)."""
        return (self.experiment, self.method, self.labels, self.sampler)


@dataclass
class Grid:
    name: str
    path: Path
    jobs: list[Job]
    out_dir: Path
    """Results: ``runs.csv``, ``summary.md``, the plots and the records of the finished runs."""
    goals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Per experiment: ``goal_ratio``, ``goal_return`` (on the mean over seeds) and ``goal_worst`` (the final return
    of every seed) that its preference runs are to reach."""
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Text for the summary, per experiment ("" for the whole grid)."""
    baselines: dict[str, str] = dataclasses.field(default_factory=dict)
    """Experiments whose preference runs compare with another experiment's true-reward runs (its ``baseline``)."""

    def baseline_of(self, experiment: str) -> str:
        """The experiment whose true-reward runs ``experiment``'s ratios and plots compare with."""
        return self.baselines.get(experiment, experiment)


# ------------------------------------------------------------------------------------------------
# Reading a grid file.


def load_grid(path: str | Path, *, runs_dir: Path | None = None, out_dir: Path | None = None) -> Grid:
    """Every run of the grid at ``path``, each with its resolved config; any mistake is refused here. Run
    directories go in ``runs_dir`` (default ``benchmarks/runs/NAME``), results in ``out_dir`` (default
    ``benchmarks/results/NAME``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"bench: no such grid file '{path}'")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"bench: {path} is not valid TOML ({e})") from None
    _check_keys(data, _TOP, f"{path}")
    name = data.get("name", path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"bench: grid name {name!r} must be letters, digits, '.', '_' or '-' (it names directories)")
    entries = data.get("experiments", [])
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f'bench: {path} names no experiments; add [[experiments]] tables with experiment = "..."')
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("benchmarks") / "runs" / name
    out_dir = Path(out_dir) if out_dir is not None else Path("benchmarks") / "results" / name
    jobs: list[Job] = []
    seen: set[str] = set()
    goals: dict[str, dict[str, float]] = {}
    notes = {"": data["notes"].strip()} if data.get("notes", "").strip() else {}
    baselines: dict[str, tuple[str, str]] = {}  # experiment -> (its baseline, where it says so)
    for i, entry in enumerate(entries):
        where = f"{path}: experiments[{i}]"
        _check_keys(entry, _EXPERIMENT, where)
        opts = {k: entry.get(k, data.get(k, default)) for k, default in _DEFAULTS.items()}
        if "baseline" in entry:  # a variant of another experiment, measured against that one's true-reward runs
            if entry.get("true_reward"):
                raise ConfigError(
                    f"{where}: baseline = {entry['baseline']!r} compares with that experiment's true-reward runs; "
                    "drop true_reward = true (or the baseline)"
                )
            opts["true_reward"] = False
        opts["set"] = [*data.get("set", []), *entry.get("set", [])]
        _check_values(opts, where)
        base, file, label = _experiment_source(entry, path, where)
        overrides = [*opts["set"], "baseline=false", f"eval_episodes={opts['eval_episodes']}"]
        if opts["timesteps"]:
            overrides.append(f"total_timesteps={opts['timesteps']}")
        exp_cfg = load_config(file, overrides, base=base)
        exp = entry.get("name", exp_cfg.name if file is not None else label)
        if exp in seen:
            raise ConfigError(f"{where}: a second experiment named {exp!r}; give one of them name = '...'")
        seen.add(exp)
        if "baseline" in entry:
            baselines[exp] = (entry["baseline"], where)
        wanted = {k: entry.get(k, data.get(k)) for k in ("goal_ratio", "goal_return", "goal_worst")}
        goals[exp] = {k: float(v) for k, v in wanted.items() if v is not None}
        if entry.get("notes", "").strip():
            notes[exp] = entry["notes"].strip()
        eval_every = opts["eval_every"] or max(1, exp_cfg.total_timesteps // 10)
        methods = ([("true", 0, "")] if opts["true_reward"] else []) + [
            ("prefrl", n, s) for n in opts["labels"] for s in opts["samplers"]
        ]
        if not methods:
            raise ConfigError(f"{where}: nothing to run; give labels = [...] or true_reward = true")
        for seed in opts["seeds"]:
            for method, n, sampler in methods:
                run_name = _slug(f"{exp}-true-s{seed}" if method == "true" else f"{exp}-prefrl-{sampler}-{n}-s{seed}")
                extra = [f"seed={seed}", f"name='{run_name}'", f"eval_every={eval_every}"]
                if method == "true":
                    extra.append("reward_source='true'")
                else:
                    extra += [f"labels.total={n}", f"labels.sampler='{sampler}'"]
                cfg = load_config(file, [*overrides, *extra], base=base)
                record = out_dir / "finished" / f"{run_name}.json"
                jobs.append(Job(exp, cfg.env.id, method, n, sampler, seed, runs_dir / run_name, cfg, record))
    jobs.sort(key=lambda j: j.seed)  # seed 0 of every setting first: a grid cut short still covers them all
    _check_baselines(jobs, baselines)
    _check_runs(jobs)
    return Grid(name, path, jobs, out_dir, goals, notes, {e: b for e, (b, _) in baselines.items()})


def _check_baselines(jobs: list[Job], baselines: dict[str, tuple[str, str]]) -> None:
    """A baseline is an experiment of the grid with true-reward runs on the same env, as long, of the same seeds."""
    for exp, (base, where) in baselines.items():
        true = {j.seed: j for j in jobs if j.experiment == base and j.method == "true"}
        if not true:
            names = sorted({j.experiment for j in jobs if j.method == "true"})
            raise ConfigError(
                f"{where}: baseline = {base!r} is not an experiment of this grid with true-reward runs; "
                f"give one of {', '.join(map(repr, names)) or '(none: add one with true_reward = true)'}"
            )
        for job in (j for j in jobs if j.experiment == exp):
            other = true.get(job.seed)
            if other is None:
                raise ConfigError(f"{where}: seed {job.seed} has no true-reward run in baseline {base!r}; add it there")
            if (job.env, job.config.total_timesteps) != (other.env, other.config.total_timesteps):
                raise ConfigError(
                    f"{where}: {exp!r} runs {job.env} for {job.config.total_timesteps} steps, its baseline {base!r} "
                    f"{other.env} for {other.config.total_timesteps}; a ratio needs the same env and steps"
                )


def _experiment_source(entry: dict, grid_path: Path, where: str) -> tuple[dict | None, Path | None, str]:
    """(base config, experiment file, label) of an [[experiments]] entry."""
    if ("experiment" in entry) == ("env" in entry):
        raise ConfigError(f'{where}: give exactly one of experiment = "FILE" or env = "ENV_ID"')
    if "env" in entry:
        env_id = entry["env"]
        return {"name": _slug(env_id), "env": {"id": env_id}}, None, _slug(env_id)
    name = entry["experiment"]
    names = [name] if name.endswith(".toml") else [name, f"{name}.toml"]
    places = [
        grid_path.parent,
        Path.cwd(),
        Path.cwd() / "experiments",
        Path(__file__).resolve().parents[1] / "experiments",
    ]
    for place in places:
        for n in names:
            if (place / n).is_file():
                return None, place / n, Path(n).stem
    tried = ", ".join(str(p) for p in dict.fromkeys(places))
    raise ConfigError(f"{where}: experiment {name!r} not found (looked in {tried}); give a path to a TOML file")


def _check_keys(table: dict, allowed: dict[str, type], where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        tp = allowed[key]
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {value!r}")
        if not (isinstance(value, tp) or (tp is float and isinstance(value, int))):
            raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {value!r}")


def _check_values(opts: dict[str, Any], where: str) -> None:
    def ints(key: str, low: int) -> None:
        vals = opts[key]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in vals):
            raise ConfigError(f"{where}: {key} = {vals!r} must be a list of integers ≥ {low}")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{where}: {key} = {vals!r} lists a value twice")

    ints("seeds", 0)
    ints("labels", 1)
    if not opts["seeds"]:
        raise ConfigError(f"{where}: seeds = [] runs nothing; give at least one seed")
    if not all(isinstance(s, str) for s in opts["samplers"]) or len(set(opts["samplers"])) != len(opts["samplers"]):
        raise ConfigError(f"{where}: samplers = {opts['samplers']!r} must be distinct names, e.g. ['disagreement']")
    if not all(isinstance(s, str) for s in opts["set"]):
        raise ConfigError(f"{where}: set = {opts['set']!r} must be a list of 'key=value' strings")
    for key in ("timesteps", "eval_every", "eval_episodes"):
        if opts[key] < 0:
            raise ConfigError(f"{where}: {key} = {opts[key]} must be ≥ 0")
    if opts["eval_episodes"] < 1:
        raise ConfigError(f"{where}: eval_episodes = 0 leaves the results without returns; give ≥ 1")


def _check_runs(jobs: list[Job]) -> None:
    """Refuse, before any compute, a run directory (or a finished run's record) made with a different config:
    the grid file changed."""
    from prefrl.make import check_config
    from prefrl.run import RunDir

    checked: set[tuple] = set()
    for job in jobs:
        key = (job.experiment, job.method, job.sampler)
        if key not in checked:
            check_config(job.config)
            checked.add(key)
        if (job.run_dir / "config.toml").exists():
            saved_cfg, what = RunDir(job.run_dir).load_config(), f"{job.run_dir}"
            away = "move that run directory away to start it afresh"
        elif job.record.exists():
            saved_cfg = loads_config(_read_record(job)["config"])
            what = f"the finished run recorded in {job.record}"
            away = "delete that record to run it afresh"
        else:
            continue
        saved, wanted = _settled(saved_cfg), _settled(job.config)
        diff = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k) and _matters(job, k)]
        if diff == ["total_timesteps"] and wanted[diff[0]] > saved[diff[0]]:
            why = _cannot_lengthen(job)
            if why:
                raise ConfigError(
                    f"bench: {what} ran to total_timesteps = {saved[diff[0]]}, the grid now gives "
                    f"{wanted[diff[0]]}; {why}. Restore the grid file, or {away}"
                )
            continue  # run_job lengthens it (a recorded run without its directory starts afresh)
        if diff:
            k = diff[0]
            raise ConfigError(
                f"bench: {what} was started with {k} = {saved.get(k)!r}, the grid now gives {wanted.get(k)!r}; "
                f"restore the grid file, or {away}"
            )


def _settled(cfg: TrainConfig) -> dict[str, Any]:
    """The flat config, with the settings whose ``auto`` was once a fixed default replaced by what they settle to:
    a run made when the default was written down is the same run as one that leaves it to ``auto``."""
    from prefrl.make import ends_share

    flat = _flat(to_dict(cfg))
    for key, settle in {"labels.ends_share": ends_share}.items():
        flat[key] = settle(cfg)
    return flat


# What a run on the true reward never reads: a grid may retune the preference learning without restarting it.
_UNUSED_BY_TRUE_REWARD = ("reward.", "labels.", "segments.", "oracle.")


def _cannot_lengthen(job: Job) -> str:
    """Why a run cannot simply go on to a larger ``total_timesteps`` ("" when it can): it can when nothing it did
    depended on its length, i.e. a true-reward run whose agent has no ``lin_`` schedule (those decay over the whole
    run). Lengthened, it continues from its last checkpoint as if it had been interrupted there."""
    from prefrl.make import is_schedule

    if job.method != "true":
        return "a preference run spreads its labels over its whole length, so it cannot be lengthened"
    scheduled = sorted(k for k, v in job.config.agent.kwargs.items() if is_schedule(v))
    if scheduled:
        return f"its agent's {', '.join(scheduled)} decay over the whole run, so it cannot be lengthened"
    return ""


def _lengthen(job: Job) -> None:
    """A finished (or part-way) run that the grid now wants longer: its config says the new length, and it is no
    longer finished; :func:`prefrl.loop.train` resumes it from its last checkpoint."""
    from prefrl.run import RunDir

    run = RunDir(job.run_dir)
    if run.config_path.exists() and run.load_config().total_timesteps < job.config.total_timesteps:
        run.save_config(job.config)
        (run.ckpt / "final.json").unlink(missing_ok=True)


def _matters(job: Job, key: str) -> bool:
    return not (job.method == "true" and key.startswith(_UNUSED_BY_TRUE_REWARD))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


# ------------------------------------------------------------------------------------------------
# Running it.


def run_job(job: Job) -> dict[str, Any]:
    """Train one cell of the grid (or resume it, or return its result if it is finished). Runs in a pool
    worker or a Ray task; each gets one CPU thread, so ``workers`` runs share ``workers`` cores."""
    import torch

    from prefrl.loop import train
    from prefrl.run import RunDir

    torch.set_num_threads(1)
    _lengthen(job)
    result = train(job.config, RunDir(job.run_dir), progress=False)
    return {"name": job.name, "timesteps": result.timesteps, "true_return": result.true_return}


@dataclass
class Report:
    planned: int
    finished: int
    failed: dict[str, str]
    ran: list[str]
    """Names of the runs trained (or resumed) by this call; finished ones are skipped."""
    written: list[Path]


def run_grid(
    grid: Grid,
    *,
    workers: int = 2,
    ray_address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run every unfinished cell of ``grid`` (local pool of ``workers`` processes, or Ray at ``ray_address``:
    ``auto``, ``HOST:PORT``, or ``local`` to start a Ray instance on this machine), then write the results."""
    say = log or (lambda msg: print(f"prefrl: {msg}", file=sys.stderr, flush=True))
    if workers < 1:
        raise ConfigError("--workers must be ≥ 1")
    todo = [j for j in grid.jobs if not _finished(j)]
    resumed = sum((j.run_dir / "checkpoint" / "state.json").exists() for j in todo)
    where = f"Ray at {ray_address}" if ray_address else f"a local pool of {min(workers, max(1, len(todo)))} workers"
    say(
        f"grid {grid.name}: {len(grid.jobs)} runs, {len(grid.jobs) - len(todo)} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start" + (f", on {where}" if todo else "")
    )
    failed: dict[str, str] = {}
    view = _Progress(grid.jobs, enabled=progress)
    last_write = time.monotonic()

    def done(job: Job, error: BaseException | None) -> None:
        if error is None:
            view.write(f"{job.name}: true return {_read_final(job)['true_return']:.1f}")
            write_records(grid, collect_rows(grid))  # at once: the record is what outlives the run directory
        else:
            failed[job.name] = f"{type(error).__name__}: {error}"
            view.write(f"{job.name}: FAILED ({failed[job.name]})")
        nonlocal last_write
        if time.monotonic() - last_write > 60:  # results so far, while the rest runs
            write_results(grid)
            last_write = time.monotonic()

    try:
        with _sigterm_interrupts():
            if todo and ray_address:
                _run_ray(todo, address=ray_address, workers=workers, on_done=done, poll=view.refresh)
            elif todo:
                _run_pool(todo, workers=workers, on_done=done, poll=view.refresh)
    finally:
        view.close()
        written = write_results(grid)  # also when interrupted: the results so far
    finished = sum(_finished(j) for j in grid.jobs)
    return Report(len(grid.jobs), finished, failed, [j.name for j in todo], written)


def _run_pool(todo: list[Job], *, workers: int, on_done, poll) -> None:
    """The jobs in a pool of ``workers`` processes. Interrupted (Ctrl-C, or ``kill``: see :func:`_sigterm_interrupts`),
    it stops its workers at once, each run keeping its last checkpoint; killed outright, its workers notice and
    end themselves (:func:`_init_worker`) rather than train on unwatched."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    before = set(mp.active_children())
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    pending = {pool.submit(run_job, job): job for job in todo}
    try:
        while pending:
            ready, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in ready:
                on_done(pending.pop(fut), fut.exception())
            poll()
    except BaseException as e:
        for fut in pending:
            fut.cancel()
        if isinstance(e, _Terminated):  # Ctrl-C reaches the workers itself; a `kill` of this process does not
            workers_left = set(mp.active_children()) - before
            for child in workers_left:
                child.terminate()  # each unwinds as from Ctrl-C (see _init_worker), keeping its checkpoint
            pool.shutdown(wait=False, cancel_futures=True)
            for child in workers_left:
                child.join(timeout=30)
                if child.is_alive():
                    child.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def _init_worker(parent: int) -> None:
    """Pool worker initializer: SIGTERM stops this worker's run as Ctrl-C would (also where a shell started the
    grid in the background, ignoring Ctrl-C's signal), and the worker ends once the process that started it is
    gone (killed with no chance to stop it). Its run resumes from its last checkpoint next time, and its lock is
    free for that."""
    signal.signal(signal.SIGTERM, _raise_terminated)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, name="prefrl-exit-with-parent", daemon=True).start()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, to stop the grid (or a worker's run) as Ctrl-C does."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """``kill`` (SIGTERM) stops a grid as Ctrl-C does: workers stopped, results so far written. Only the main
    thread can set a signal handler; elsewhere SIGTERM keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _probe(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` where nothing listens (Ray itself retries a dead address for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the head node with "
            "`ray start --head` and pass the address it prints"
        ) from None


def _run_ray(todo: list[Job], *, address: str, workers: int, on_done, poll) -> None:
    """The same :func:`run_job` as Ray tasks of one CPU each; at most ``workers`` in flight at once."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray-address needs Ray: pip install 'prefrl[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="warning")
        else:
            _probe(address)
            try:
                ray.init(address=address, logging_level="warning")
            except ConnectionError as e:
                raise ConfigError(
                    f"--ray-address {address}: no Ray cluster there ({e}); start one with `ray start`"
                ) from None
    task = ray.remote(num_cpus=1, max_retries=0)(run_job)
    queue, pending = list(todo), {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[task.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    ray.get(ref)
                    on_done(job, None)
                except ray.exceptions.RayTaskError as e:
                    on_done(job, e.as_instanceof_cause())
                except ray.exceptions.RayError as e:  # a worker or node lost
                    on_done(job, e)
            poll()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


class _Progress:
    """One bar over the steps of the whole grid, read from the runs' checkpoints; a line per finished run."""

    def __init__(self, jobs: list[Job], *, enabled: bool) -> None:
        from tqdm import tqdm

        self.jobs = jobs
        total = sum(j.config.total_timesteps for j in jobs)
        self.bar = tqdm(total=total, unit="step", unit_scale=True, desc="grid", disable=not enabled, smoothing=0.05)
        self.refresh()

    def refresh(self) -> None:
        steps = [_timesteps_done(j) for j in self.jobs]
        finished = sum(_finished(j) for j in self.jobs)
        started = sum(s > 0 for s in steps) - finished
        self.bar.update(min(sum(steps), self.bar.total) - self.bar.n)
        self.bar.set_postfix_str(f"{finished}/{len(self.jobs)} runs finished, {started} part-way")

    def write(self, msg: str) -> None:
        self.bar.write(f"prefrl: {msg}", file=sys.stderr)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def status(grid: Grid) -> list[dict[str, Any]]:
    """Where every run of the grid stands: ``finished``, ``part-way`` (with its steps) or ``not started``; with
    ``wall_s``, its training time so far (NaN where unknown), and for a part-way run ``eta_s``, the time its
    remaining steps take at its rate since its first logged row (past setup such as the reward fit before RL)."""
    out = []
    for j in grid.jobs:
        t = _timesteps_done(j)
        state = "finished" if _finished(j) else "part-way" if t > 0 else "not started"
        wall = _wall_s(j) if t > 0 else 0.0
        total = j.config.total_timesteps
        if state == "part-way":  # t > 0; a run past its steps but not yet evaluated has none left
            eta = _seconds_per_step(j, default=wall / t) * max(total - t, 0)
        else:
            eta = 0.0 if state == "finished" else math.nan
        out.append({"run": j.name, "state": state, "timesteps": t, "total": total, "wall_s": wall, "eta_s": eta})
    return out


def _wall_s(job: Job) -> float:
    """Training time so far: the run's last checkpoint's, or for a finished run known only by its record, its
    last row's; NaN where neither says."""
    try:
        return float(json.loads((job.run_dir / "checkpoint" / "state.json").read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return float(_read_record(job)["rows"][-1]["wall_s"])
    except (OSError, ConfigError, KeyError, IndexError, TypeError, ValueError):
        return math.nan


def _seconds_per_step(job: Job, *, default: float) -> float:
    """Wall seconds per agent step between the first and last rows of the run's ``metrics.csv`` (``default`` if
    they are not two distinct points)."""
    try:
        with open(job.run_dir / "metrics.csv", newline="") as f:
            points = [(float(r["timesteps"]), float(r["wall_s"])) for r in csv.DictReader(f) if r.get("wall_s")]
    except (OSError, KeyError, ValueError):
        return default
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return default
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _finished(job: Job) -> bool:
    """Trained to the grid's length (a run the grid has since lengthened is part-way again), by its run directory
    or, without one, by its record in the results."""
    try:
        return _read_final(job)["timesteps"] >= job.config.total_timesteps
    except (OSError, ValueError, KeyError):
        return False


def _read_final(job: Job) -> dict[str, Any]:
    """The run's ``final.json``; a run whose directory is not here has its record's."""
    path = job.run_dir / "checkpoint" / "final.json"
    if path.exists() or (job.run_dir / "config.toml").exists() or not job.record.exists():
        return json.loads(path.read_text())
    return _read_record(job)["final"]


def _read_record(job: Job) -> dict[str, Any]:
    try:
        return json.loads(job.record.read_text())
    except ValueError as e:
        raise ConfigError(f"bench: {job.record} is not a run record ({e}); restore it from version control") from None


def _timesteps_done(job: Job) -> int:
    for name in ("final.json", "state.json"):
        path = job.run_dir / "checkpoint" / name
        try:
            return int(json.loads(path.read_text()).get("timesteps", 0))
        except (OSError, ValueError):
            continue
    return _read_final(job)["timesteps"] if _finished(job) else 0


# ------------------------------------------------------------------------------------------------
# Results: runs.csv, summary.md, plots.


def collect_rows(grid: Grid) -> list[dict[str, Any]]:
    """One row per run and evaluation point, from the runs' ``metrics.csv`` (finished or not), or from the record
    of a finished run whose directory is not here."""
    rows = []
    for job in grid.jobs:
        path = job.run_dir / "metrics.csv"
        if not path.exists():
            if _finished(job):
                rows += [{k: math.nan if v is None else v for k, v in r.items()} for r in _read_record(job)["rows"]]
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
    rows.sort(key=lambda r: (order[_group(r)], r["seed"], r["timesteps"]))
    return rows


def _group(r: dict[str, Any]) -> tuple[str, str, int, str]:
    return (r["experiment"], r["method"], int(r["labels"]), r["sampler"])


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


def write_records(grid: Grid, rows: list[dict[str, Any]]) -> list[Path]:
    """``finished/RUN.json`` for every run finished in its directory whose record is missing or stale: what a
    checkout without the run directories needs to skip the run and still show its results."""
    written = []
    for job in grid.jobs:
        if not ((job.run_dir / "checkpoint" / "final.json").exists() and _finished(job)):
            continue
        final = _read_final(job)
        if job.record.exists() and _read_record(job)["final"] == final:
            continue  # unchanged: keep the commit it was first recorded on
        record = {
            "run": job.name,
            "commit": machine_info()["commit"],
            "machine": machine(),
            "final": final,
            "config": dumps_config(job.config),
            "rows": [
                {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                for r in rows
                if _group(r) == job.group and r["seed"] == job.seed
            ],
        }
        job.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        tmp.replace(job.record)
        written.append(job.record)
    return written


def random_returns(grid: Grid, out_dir: Path, episodes: int = 20) -> dict[str, float]:
    """Mean return of a uniformly random policy per experiment (the 0 of the normalized score); cached."""
    path = out_dir / "random_returns.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    for job in grid.jobs:
        if job.experiment not in cache:
            cache[job.experiment] = _random_return(job.config, episodes)
    path.write_text(json.dumps(cache, indent=1))
    return cache


def _random_return(cfg: TrainConfig, episodes: int) -> float:
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


def write_summary(grid: Grid, rows: list[dict[str, Any]], path: Path, *, randoms: dict[str, float]) -> Path:
    """Final true return per setting (mean ± std over seeds) against the true-reward runs of the same seeds."""
    final: dict[tuple, dict[int, tuple[int, float]]] = {}  # group -> seed -> (timesteps, return) of finished runs
    late: dict[tuple, dict[int, float]] = {}  # group -> seed -> mean return of its last LATE_EVALS evaluations
    for job in grid.jobs:
        if _finished(job):
            last = [r for r in rows if _group(r) == job.group and r["seed"] == job.seed]
            if last:
                final.setdefault(job.group, {})[job.seed] = (last[-1]["timesteps"], last[-1]["true_return"])
                late.setdefault(job.group, {})[job.seed] = float(
                    np.mean([r["true_return"] for r in last[-LATE_EVALS:]])
                )
    groups = list(dict.fromkeys(j.group for j in grid.jobs))
    n_seeds = {g: sum(j.group == g for j in grid.jobs) for g in groups}
    finished = sum(_finished(j) for j in grid.jobs)
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
    ]
    for g in groups:
        exp, method, labels, sampler = g
        env = next(j.env for j in grid.jobs if j.group == g)
        mine = final.get(g, {})
        if not mine:
            lines.append(f"| {exp} | {env} | {_method(grid, g)} | {labels or '—'} | {sampler or '—'} | 0/{n_seeds[g]} "
                         "| — | — | — | — | — | — | " + ("— | " if goal_col else "") + "— |")  # fmt: skip
            continue
        vals = [v for _, v in mine.values()]
        steps = sorted({t for t, _ in mine.values()})
        base_group = (grid.baseline_of(exp), "true", 0, "")
        base = final.get(base_group, {})
        seeds = [s for s in mine if s in base and base[s][0] == mine[s][0]]
        ratio = late_ratio = norm = "—"
        m_ratio: float | str = "pending"  # until the true-reward runs of the same seeds finish
        if seeds and method != "true":
            m, b = np.mean([mine[s][1] for s in seeds]), np.mean([base[s][1] for s in seeds])
            m_ratio = m / b if b > 0 else "undefined (the true-reward return is ≤ 0)"
            ratio = f"{m / b:.2f}" if b > 0 else "—"
            late_b = np.mean([late[base_group][s] for s in seeds])
            late_ratio = f"{np.mean([late[g][s] for s in seeds]) / late_b:.2f}" if late_b > 0 else "—"
            rnd = randoms.get(exp)
            norm = f"{(m - rnd) / (b - rnd):.2f}" if rnd is not None and b != rnd else "—"
        wall_by_seed = {r["seed"]: r["wall_s"] for r in rows if _group(r) == g and r["seed"] in mine}  # the last
        wall = f"{np.mean(list(wall_by_seed.values())):.0f}"
        goal = ""
        if goal_col:
            achieved = _goal(grid.goals.get(exp, {}), m_ratio, float(np.mean(vals)), float(np.min(vals)))
            goal = "— | " if method == "true" else f"{achieved} | "
        lines.append(
            f"| {exp} | {env} | {_method(grid, g)} | {labels or '—'} | {sampler or '—'} | {len(mine)}/{n_seeds[g]} | "
            f"{'/'.join(_steps(t) for t in steps)} | {np.mean(vals):.1f} ± {np.std(vals):.1f} | {np.min(vals):.1f} | "
            f"{ratio} | "
            f"{late_ratio} | {norm} | {goal}{wall} |"
        )
    lines += ["", "Random policy: " + ", ".join(f"{e} {v:.1f}" for e, v in randoms.items()), ""]
    lines += _part_way_lines(grid, rows)
    if grid.notes:
        lines += ["## Notes", ""]
        lines += [grid.notes[""], ""] if "" in grid.notes else []
        lines += [f"**{exp}**: {text}\n" for exp, text in grid.notes.items() if exp]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


def _ran_on(grid: Grid) -> str:
    """Where and at which commits the finished runs ran, by their records (``""`` before any has one): a grid
    that takes days may finish its runs on other machines and commits than the one writing its tables."""
    commits: dict[str, list[str]] = {}  # machine -> the commit of each run recorded on it
    for job in grid.jobs:
        if not job.record.exists():
            continue
        record = _read_record(job)
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
        by_run.setdefault((*_group(r), r["seed"]), []).append(r)
    lines = []
    for job in grid.jobs:
        mine = by_run.get((*job.group, job.seed))
        if _finished(job) or not mine:
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


def _method(grid: Grid, group: tuple[str, str, int, str]) -> str:
    """``A2C, true reward`` (the experiment's own algorithm) or ``prefrl``."""
    if group[1] != "true":
        return "prefrl"
    return f"{next(j.config.agent.algo for j in grid.jobs if j.group == group)}, true reward"


def _steps(t: int) -> str:
    return f"{t / 1e6:g}M" if t >= 1_000_000 else f"{t / 1e3:g}k" if t >= 1000 else str(t)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return path.name


def machine_info() -> dict[str, str]:
    """CPU, cores, versions, the commit the numbers come from and the date, for benchmark tables."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(git, capture_output=True, text=True, check=True, cwd=Path(__file__).parent, timeout=10)
        commit = out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def machine() -> str:
    """One line: CPU, cores, versions and the commit the numbers come from."""
    m = machine_info()
    return f"{m['cpu']}, {m['cpus']} cores, Python {m['python']}, torch {m['torch']}, commit {m['commit']}"


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
    from prefrl.plots import _COLORS, _style

    _style(ax)
    base = grid.baseline_of(exp)  # a variant's panel shows its baseline's true-reward line
    groups = list(dict.fromkeys(j.group for j in grid.jobs if j.experiment == exp or j.group[:2] == (base, "true")))
    samplers = {g[3] for g in groups if g[1] == "prefrl"}
    colors = itertools.cycle(_COLORS)  # black is the true reward
    for g in groups:
        curves = _curves([r for r in rows if _group(r) == g])
        if not curves:
            if g[1] != "true":
                next(colors)
            continue
        if g[1] == "true":
            color, name = "black", _method(grid, g)
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
    from prefrl.plots import _common_grid

    grid = _common_grid([x for x, _ in curves])
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
