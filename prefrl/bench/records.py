"""Run records: ``OUT/finished/RUN.json``, what outlives a finished run's directory (its config, result,
evaluation rows, and the machine and commit it finished on), and the machine and commit info itself."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefrl.config import ConfigError, dumps_config

if TYPE_CHECKING:
    from prefrl.bench.grid import Grid, Job


def is_finished(job: Job) -> bool:
    """Trained to the grid's length (a run the grid has since lengthened is part-way again), by its run directory
    or, without one, by its record in the results."""
    try:
        return read_final_result(job)["timesteps"] >= job.config.total_timesteps
    except (OSError, ValueError, KeyError):
        return False


def read_final_result(job: Job) -> dict[str, Any]:
    """The run's ``final.json``; a run whose directory is not here has its record's."""
    run = job.run
    if run.finished() or run.config_path.exists() or not job.record.exists():
        return run.read_final()
    return read_record(job)["final"]


def read_record(job: Job) -> dict[str, Any]:
    try:
        return json.loads(job.record.read_text())
    except ValueError as e:
        raise ConfigError(f"bench: {job.record} is not a run record ({e}); restore it from version control") from None


def timesteps_done(job: Job) -> int:
    done = job.run.timesteps()
    if done is not None:
        return done
    return read_final_result(job)["timesteps"] if is_finished(job) else 0


def write_records(grid: Grid, rows: list[dict[str, Any]]) -> list[Path]:
    """``finished/RUN.json`` for every run finished in its directory whose record is missing or stale: what a
    checkout without the run directories needs to skip the run and still show its results."""
    written = []
    for job in grid.jobs:
        if not (job.run.finished() and is_finished(job)):
            continue
        final = read_final_result(job)
        if job.record.exists() and read_record(job)["final"] == final:
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
                if group_key(r) == job.group and r["seed"] == job.seed
            ],
        }
        job.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        tmp.replace(job.record)
        written.append(job.record)
    return written


def group_key(r: dict[str, Any]) -> tuple[str, str, int, str]:
    return (r["experiment"], r["method"], int(r["labels"]), r["sampler"])


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
