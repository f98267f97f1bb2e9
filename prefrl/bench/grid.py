"""Reading a grid file: every cell of the grid as a :class:`Job` with its resolved config, and every mistake
refused before any compute."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefrl.bench.records import read_record
from prefrl.config import ConfigError, TrainConfig, load_config, loads_config, read_toml, to_dict
from prefrl.run import RunDir
from prefrl.shipped import shipped_dir, shipped_names

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
    def run(self) -> RunDir:
        """The run directory, to read (it is not created: it may not exist)."""
        return RunDir.peek(self.run_dir)

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


def load_grid(path: str | Path, *, runs_dir: Path | None = None, out_dir: Path | None = None) -> Grid:
    """Every run of the grid at ``path``, each with its resolved config; any mistake is refused here. Run
    directories go in ``runs_dir`` (default ``benchmarks/runs/NAME``), results in ``out_dir`` (default
    ``benchmarks/results/NAME``)."""
    path = Path(path)
    data = read_toml(path, "bench", "grid file")
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
        overrides.append(f"eval_every={eval_every}")
        jobs += _experiment_jobs(exp, opts, (base, file, overrides), runs_dir=runs_dir, out_dir=out_dir, where=where)
    jobs.sort(key=lambda j: j.seed)  # seed 0 of every setting first: a grid cut short still covers them all
    _check_baselines(jobs, baselines)
    _check_runs(jobs)
    return Grid(name, path, jobs, out_dir, goals, notes, {e: b for e, (b, _) in baselines.items()})


def _experiment_jobs(
    exp: str,
    opts: dict[str, Any],
    source: tuple[dict | None, Path | None, list[str]],
    *,
    runs_dir: Path,
    out_dir: Path,
    where: str,
) -> list[Job]:
    """The runs of one [[experiments]] entry: each seed × (the true reward, and each label budget × sampler).
    ``source`` is the entry's (base config, experiment file, overrides)."""
    base, file, overrides = source
    methods = ([("true", 0, "")] if opts["true_reward"] else []) + [
        ("prefrl", n, s) for n in opts["labels"] for s in opts["samplers"]
    ]
    if not methods:
        raise ConfigError(f"{where}: nothing to run; give labels = [...] or true_reward = true")
    jobs = []
    for seed in opts["seeds"]:
        for method, n, sampler in methods:
            run_name = _slug(f"{exp}-true-s{seed}" if method == "true" else f"{exp}-prefrl-{sampler}-{n}-s{seed}")
            extra = [f"seed={seed}", f"name='{run_name}'"]
            if method == "true":
                extra.append("reward_source='true'")
            else:
                extra += [f"labels.total={n}", f"labels.sampler='{sampler}'"]
            cfg = load_config(file, [*overrides, *extra], base=base)
            record = out_dir / "finished" / f"{run_name}.json"
            jobs.append(Job(exp, cfg.env.id, method, n, sampler, seed, runs_dir / run_name, cfg, record))
    return jobs


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
    places = [grid_path.parent, Path.cwd(), Path.cwd() / "experiments", shipped_dir("experiments")]
    for place in places:
        for n in names:
            if (place / n).is_file():
                return None, place / n, Path(n).stem
    tried = ", ".join(str(p) for p in dict.fromkeys(places))
    raise ConfigError(
        f"{where}: experiment {name!r} not found (looked in {tried}); give a path to a TOML file or one of the "
        f"shipped experiments: {', '.join(shipped_names('experiments'))}"
    )


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

    checked: set[tuple] = set()
    for job in jobs:
        key = (job.experiment, job.method, job.sampler)
        if key not in checked:
            check_config(job.config)
            checked.add(key)
        if job.run.config_path.exists():
            saved_cfg, what = job.run.load_config(), f"{job.run_dir}"
            away = "move that run directory away to start it afresh"
        elif job.record.exists():
            saved_cfg = loads_config(read_record(job)["config"])
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
