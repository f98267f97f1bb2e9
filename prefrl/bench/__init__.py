"""Grids of runs: environments × methods (true reward, prefrl at each label budget and sampler) × seeds.

A grid file (a path, or the name of a shipped grid: ``prefrl bench canary``) names experiments and what to
vary; every cell of the grid is an ordinary run directory (``prefrl plot RUN`` and ``prefrl train --resume RUN``
work on it). Runs execute in a local process
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
experiment = "hopper"                 # experiments/hopper.toml, shipped (or a path relative to this file or the cwd)
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

The package follows those jobs: :mod:`~prefrl.bench.grid` reads a grid file, :mod:`~prefrl.bench.execute`
runs it, :mod:`~prefrl.bench.records` keeps the records of finished runs, and :mod:`~prefrl.bench.report`,
:mod:`~prefrl.bench.summary` and :mod:`~prefrl.bench.plots` write the results.
"""

from prefrl.bench.execute import Report, run_grid, run_job, status
from prefrl.bench.grid import Grid, Job, load_grid
from prefrl.bench.plots import plot_grid
from prefrl.bench.records import machine, machine_info, write_records
from prefrl.bench.report import RUNS_COLUMNS, collect_rows, random_returns, write_results
from prefrl.bench.summary import LATE_EVALS, SummaryRow, render_summary, summarize, write_summary

__all__ = [
    "LATE_EVALS",
    "RUNS_COLUMNS",
    "Grid",
    "Job",
    "Report",
    "SummaryRow",
    "collect_rows",
    "load_grid",
    "machine",
    "machine_info",
    "plot_grid",
    "random_returns",
    "render_summary",
    "run_grid",
    "run_job",
    "status",
    "summarize",
    "write_records",
    "write_results",
    "write_summary",
]
