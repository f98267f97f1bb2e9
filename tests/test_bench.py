import csv
import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import prefrl.bench.execute as bench_execute
import prefrl.bench.plots as bench_plots
import prefrl.checkpoint as checkpoint
import prefrl.loop as loop
from prefrl.bench import RUNS_COLUMNS, load_grid, run_grid, status, write_results, write_summary
from prefrl.cli import main
from prefrl.config import ConfigError, load_config, loads_config
from prefrl.data import ComparisonStore
from prefrl.make import check_config, default_segment_length, make_agent, make_vec_env
from prefrl.run import RunDir, training_lock

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks" / "grids" / "smoke.toml"
MUJOCO = [
    "hopper",
    "halfcheetah",
    "walker2d",
    "swimmer",
    "ant",
    "reacher",
    "invertedpendulum",
    "inverteddoublependulum",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The runs trained in this process share the cores with the pool's workers: one thread each, as they have."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crash_after(n: int):
    """A ``checkpoint.save`` that kills the run (as Ctrl-C would) right after its ``n``-th checkpoint."""
    real, calls = checkpoint.save, {"n": 0}

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    return save


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The smoke grid through the local pool of 2 processes, one of its runs killed part-way beforehand."""
    base = tmp_path_factory.mktemp("bench")
    runs, out = base / "runs", base / "results"
    grid = load_grid(SMOKE, runs_dir=runs)
    killed = next(j for j in grid.jobs if j.method == "prefrl" and j.experiment == "cartpole" and j.seed == 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save", crash_after(3))
        with pytest.raises(KeyboardInterrupt):
            loop.train(killed.config, RunDir(killed.run_dir), progress=False)
    before = SimpleNamespace(
        metrics=(killed.run_dir / "metrics.csv").read_text().splitlines(),
        labels={c.query_id: c for c in ComparisonStore(killed.run_dir / "labels.sqlite").comparisons()},
        status={s["run"]: s for s in status(grid)},
    )
    rc = main(["bench", str(SMOKE), "--runs", str(runs), "--out", str(out), "--workers", "2", "--no-progress"])
    return SimpleNamespace(rc=rc, grid=grid, runs=runs, out=out, killed=killed, before=before)


def test_local_pool_runs_the_grid_and_writes_table_summary_and_plots(pool):
    assert pool.rc == 0
    rows = read_rows(pool.out / "runs.csv")
    assert list(rows[0]) == RUNS_COLUMNS
    assert len(pool.grid.jobs) == 8  # 2 envs x (true reward + 20 labels) x 2 seeds
    for job in pool.grid.jobs:
        mine = [
            r for r in rows if (r["experiment"], r["method"], r["seed"]) == (job.experiment, job.method, str(job.seed))
        ]
        assert [int(r["timesteps"]) for r in mine] == [2048, 4096]  # eval_every = 2048, and the end
        assert all(r["true_return"] not in ("", "nan") for r in mine)
        if job.method == "prefrl":
            assert mine[-1]["labels_used"] == "20" and mine[-1]["labels"] == "20"
            assert all(r["predicted_return"] != "" for r in mine)
        else:
            assert {r["labels_used"] for r in mine} == {"0"} and {r["predicted_return"] for r in mine} == {""}
    summary = (pool.out / "summary.md").read_text()
    assert "Runs finished: 8 of 8." in summary and "Runs part-way" not in summary
    for env in ("CartPole-v1", "Pendulum-v1"):
        assert any(f"| {env} | PPO, true reward |" in line and "| 2/2 |" in line for line in summary.splitlines())
        assert any(f"| {env} | prefrl | 20 | disagreement | 2/2 |" in line for line in summary.splitlines())
    for name in ("returns.png", "returns-cartpole.png", "returns-Pendulum-v1.png"):
        png = (pool.out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_killed_run_resumes_from_its_checkpoint_with_its_labels(pool):
    after = (pool.killed.run_dir / "metrics.csv").read_text().splitlines()
    assert len(pool.before.metrics) >= 3
    assert after[1 : len(pool.before.metrics)] == pool.before.metrics[1:]  # rows before the kill kept, not redone
    labels = {c.query_id: c for c in ComparisonStore(pool.killed.run_dir / "labels.sqlite").comparisons()}
    assert 0 < len(pool.before.labels) < 20 and len(labels) == 20
    assert all(labels[q] == c for q, c in pool.before.labels.items())


def test_status_estimates_a_part_way_run_from_its_rate_since_its_first_row(pool):
    killed, others = pool.before.status[pool.killed.name], list(pool.before.status.values())
    with open(pool.killed.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: len(pool.before.metrics) - 1]  # the rows written before the kill
    (t0, w0), (t1, w1) = [(float(r["timesteps"]), float(r["wall_s"])) for r in (rows[0], rows[-1])]
    assert killed["state"] == "part-way" and killed["timesteps"] == t1 and killed["wall_s"] >= w1 > w0 > 0
    assert killed["eta_s"] == pytest.approx((w1 - w0) / (t1 - t0) * (killed["total"] - t1))
    assert all(s["state"] == "not started" and s["wall_s"] == 0 for s in others if s is not killed)


def test_running_a_finished_grid_again_trains_nothing(pool, capsys):
    stamps = {j.name: (j.run_dir / "metrics.csv").stat().st_mtime_ns for j in pool.grid.jobs}
    report = run_grid(load_grid(SMOKE, runs_dir=pool.runs, out_dir=pool.out), progress=False)
    assert report.ran == [] and report.finished == 8 and report.failed == {}
    assert "8 runs, 8 finished, 0 to resume, 0 to start" in capsys.readouterr().err
    assert stamps == {j.name: (j.run_dir / "metrics.csv").stat().st_mtime_ns for j in pool.grid.jobs}
    assert main(["bench", str(SMOKE), "--runs", str(pool.runs), "--out", str(pool.out), "--status"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished") == 8 and out.count(" so far") == 8 and "to go" not in out


def test_a_checkout_with_only_the_results_skips_the_recorded_runs_and_keeps_their_rows(
    pool, tmp_path, capsys, monkeypatch
):
    # The results directory (committed) without the run directories: a fresh checkout of a grid in progress.
    out = tmp_path / "results"
    shutil.copytree(pool.out, out)
    records = sorted((out / "finished").glob("*.json"))
    assert [p.stem for p in records] == sorted(j.name for j in pool.grid.jobs)
    record = json.loads(records[0].read_text())
    assert record["commit"] and record["final"]["timesteps"] >= 4096
    assert loads_config(record["config"]).name == records[0].stem
    csv_before = (out / "runs.csv").read_text()
    report = run_grid(load_grid(SMOKE, runs_dir=tmp_path / "runs", out_dir=out), progress=False)
    assert report.ran == [] and report.finished == 8 and not (tmp_path / "runs").exists()
    assert "8 runs, 8 finished, 0 to resume, 0 to start" in capsys.readouterr().err
    assert (out / "runs.csv").read_text() == csv_before  # NaN predicted returns of true-reward runs included
    assert "Runs finished: 8 of 8." in (out / "summary.md").read_text()
    assert [p.read_text() for p in records] == [p.read_text() for p in sorted((out / "finished").glob("*.json"))]

    # A grid that now gives a recorded run another config is refused, naming the record.
    changed = tmp_path / "smoke.toml"
    changed.write_text(SMOKE.read_text().replace('"reward.epochs=5"', '"reward.epochs=3"'))
    with pytest.raises(
        ConfigError, match=r"recorded in \S+cartpole-prefrl-\S+\.json was started with reward.epochs = 5"
    ):
        load_grid(changed, runs_dir=tmp_path / "runs", out_dir=out)

    # Without its record (deleted, as the message says), a run is missing again and trains from scratch; its new
    # record is written the moment it finishes, not only with the tables at the end of the grid.
    gone = next(j for j in pool.grid.jobs if j.experiment == "cartpole" and j.method == "true" and j.seed == 0)
    (out / "finished" / f"{gone.name}.json").unlink()
    monkeypatch.setattr(bench_execute, "write_results", lambda grid: [])
    report = run_grid(load_grid(SMOKE, runs_dir=tmp_path / "runs", out_dir=out), workers=1, progress=False)
    assert report.ran == [gone.name] and report.finished == 8 and report.failed == {}
    assert (out / "finished" / f"{gone.name}.json").exists()
    assert (tmp_path / "runs" / gone.name / "checkpoint" / "final.json").exists()


def test_the_summary_says_whether_each_goal_of_the_grid_is_met_and_carries_its_notes(pool, tmp_path):
    text = SMOKE.read_text().replace('name = "smoke"', 'name = "smoke"\ngoal_ratio = 0\nnotes = "Why it went so."')
    text = text.replace(
        'experiment = "cartpole"', 'experiment = "cartpole"\ngoal_return = 1e9\ngoal_worst = 0\nnotes = "Poles."'
    )
    (tmp_path / "goals.toml").write_text(text)
    grid = load_grid(tmp_path / "goals.toml", runs_dir=pool.runs, out_dir=tmp_path / "out")
    assert grid.goals == {
        "cartpole": {"goal_ratio": 0.0, "goal_return": 1e9, "goal_worst": 0.0},
        "Pendulum-v1": {"goal_ratio": 0.0},
    }
    write_results(grid)
    lines = (tmp_path / "out" / "summary.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| experiment"))
    assert header.endswith("| final true return | worst seed | ratio | late ratio | normalized | goal | mean wall s |")

    def row(exp: str, method: str) -> str:
        return next(line for line in lines if line.startswith(f"| {exp} |") and f"| {method} |" in line)

    # CartPole's returns are positive: any ratio is ≥ 0, and no agent scores 10⁹.
    assert "| ratio ≥ 0: met; return ≥ 1e+09: missed; every seed ≥ 0: met |" in row("cartpole", "prefrl")
    assert "| — |" in row("cartpole", "PPO, true reward").split("| normalized")[0]
    # Pendulum's true-reward returns are negative: no ratio, and the summary says why.
    assert "| ratio ≥ 0: undefined (the true-reward return is ≤ 0) |" in row("Pendulum-v1", "prefrl")
    assert all(line.count("|") == header.count("|") for line in lines if line.startswith("| "))
    notes = lines[lines.index("## Notes") :]
    assert "Why it went so." in notes and "**cartpole**: Poles." in notes
    (tmp_path / "bad.toml").write_text(text.replace("goal_ratio = 0", 'goal_ratio = "0.9"'))
    with pytest.raises(ConfigError, match=re.escape("'goal_ratio' must be float, got '0.9'")):
        load_grid(tmp_path / "bad.toml", runs_dir=pool.runs, out_dir=tmp_path / "out")


def test_every_grid_run_is_an_ordinary_run_directory(pool, capsys):
    run = pool.grid.jobs[1].run_dir
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "returns.png").exists()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: its result, no training
    assert "eval return" in capsys.readouterr().err


def test_a_changed_grid_is_refused_before_it_mixes_runs(pool, tmp_path):
    changed = tmp_path / "smoke.toml"
    changed.write_text(SMOKE.read_text().replace("timesteps = 4096", "timesteps = 2048"))
    with pytest.raises(ConfigError, match="was started with total_timesteps = 4096, the grid now gives 2048"):
        load_grid(changed, runs_dir=pool.runs)


def test_retuning_the_reward_learning_keeps_the_true_reward_runs_and_refuses_the_others(pool, tmp_path):
    changed = tmp_path / "smoke.toml"
    changed.write_text(SMOKE.read_text().replace('"reward.epochs=5"', '"reward.epochs=3"'))
    with pytest.raises(ConfigError, match=r"cartpole-prefrl-\S+ was started with reward.epochs = 5, the grid now"):
        load_grid(changed, runs_dir=pool.runs)
    only_true = tmp_path / "only_true.toml"  # the same grid without its prefrl runs: the true-reward ones resume
    only_true.write_text(changed.read_text().replace("labels = [20]", "labels = []\ntrue_reward = true"))
    grid = load_grid(only_true, runs_dir=pool.runs)
    assert {j.method for j in grid.jobs} == {"true"} and all((j.run_dir / "config.toml").exists() for j in grid.jobs)


def test_a_lengthened_grid_continues_its_true_reward_runs_and_refuses_to_stretch_the_others(pool, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results"
    for job in pool.grid.jobs:
        if job.seed == 0:
            shutil.copytree(job.run_dir, runs / job.name)
    head, cartpole, pendulum = SMOKE.read_text().replace("seeds = [0, 1]", "seeds = [0]").split("[[experiments]]")
    head = head.replace("timesteps = 4096", "timesteps = 6144")

    def grid(text: str) -> Path:
        (tmp_path / "longer.toml").write_text(text)
        return tmp_path / "longer.toml"

    # CartPole's PPO decays its learning rate and clip range over the run; a preference run spreads its labels.
    scheduled = (
        r"cartpole-true-s0 ran to total_timesteps = 4096, the grid now gives 6144; "
        r"its agent's clip_range, learning_rate decay over the whole run"
    )
    with pytest.raises(ConfigError, match=scheduled):
        load_grid(grid(f"{head}[[experiments]]{cartpole}"), runs_dir=runs)
    with pytest.raises(ConfigError, match=r"prefrl-disagreement-20-s0 ran to .* a preference run spreads its labels"):
        load_grid(grid(f"{head}[[experiments]]{pendulum}"), runs_dir=runs)

    # Pendulum's true-reward PPO has constant hyperparameters: it goes on from 4096 steps to 6144.
    true = next(j for j in pool.grid.jobs if j.experiment != "cartpole" and j.method == "true" and j.seed == 0)
    before = (runs / true.name / "metrics.csv").read_text().splitlines()
    path = grid(f"{head.replace('labels = [20]', 'labels = []')}[[experiments]]{pendulum}")
    assert main(["bench", str(path), "--runs", str(runs), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "1 runs, 0 finished, 1 to resume, 0 to start" in capsys.readouterr().err
    after = (runs / true.name / "metrics.csv").read_text().splitlines()
    assert after[: len(before)] == before and len(after) > len(before)
    run = RunDir(runs / true.name)
    assert run.load_config().total_timesteps == 6144 and run.read_final()["timesteps"] >= 6144
    steps = {int(r["timesteps"]) for r in read_rows(out / "runs.csv")}
    assert {2048, 4096, 6144} <= steps and "Runs finished: 1 of 1." in (out / "summary.md").read_text()
    assert main(["bench", str(path), "--runs", str(runs), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "1 runs, 1 finished, 0 to resume, 0 to start" in capsys.readouterr().err


def test_a_variant_of_the_preference_runs_is_measured_against_its_baselines_true_reward_runs(pool, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "results"
    for job in pool.grid.jobs:
        if job.experiment == "cartpole":
            shutil.copytree(job.run_dir, runs / job.name)
    head, cartpole, _ = SMOKE.read_text().split("[[experiments]]")
    variant = 'experiment = "cartpole"\nname = "cartpole-std"\nbaseline = "cartpole"\nseeds = [1]\n'
    variant += 'set = ["reward.standardize_inputs=true"]\n'
    path = tmp_path / "variant.toml"
    path.write_text(f"{head}[[experiments]]{cartpole}[[experiments]]\n{variant}")
    grid = load_grid(path, runs_dir=runs, out_dir=out)
    mine = [j for j in grid.jobs if j.experiment == "cartpole-std"]
    assert [(j.method, j.seed) for j in mine] == [("prefrl", 1)]  # no true-reward run of its own
    assert mine[0].config.reward.standardize_inputs and grid.baseline_of("cartpole-std") == "cartpole"
    report = run_grid(grid, progress=False)
    assert report.ran == [mine[0].name] and report.finished == 5
    rows = read_rows(out / "runs.csv")

    def returns(exp: str, method: str) -> list[float]:
        mine = [r for r in rows if (r["experiment"], r["method"], r["seed"]) == (exp, method, "1")]
        return [float(r["true_return"]) for r in mine]

    variant, base = returns("cartpole-std", "prefrl"), returns("cartpole", "true")
    assert len(variant) == len(base) == 2  # evaluated at 2048 and 4096 steps: the late ratio averages both
    late = np.mean(variant) / np.mean(base)
    line = next(x for x in (out / "summary.md").read_text().splitlines() if x.startswith("| cartpole-std |"))
    assert (
        f"| prefrl | 20 | disagreement | 1/1 | 4.096k | {variant[-1]:.1f} ± 0.0 | {variant[-1]:.1f} | "
        f"{variant[-1] / base[-1]:.2f} | {late:.2f} |" in line
    )
    assert (out / "returns-cartpole-std.png").stat().st_size > 10_000
    drawn = []
    real_panel = bench_plots._panel
    with pytest.MonkeyPatch.context() as mp:  # the variant's panel has its baseline's true-reward line
        mp.setattr(
            bench_plots, "_panel", lambda ax, g, r, exp, **kw: (real_panel(ax, g, r, exp, **kw), drawn.append(ax))
        )
        bench_plots.plot_grid(grid, rows, tmp_path)
    labels = [line.get_label() for line in drawn[-1].lines]
    assert any(label.startswith("PPO, true reward") for label in labels) and "20 labels" in labels


def test_ray_runs_the_same_grid_and_skips_the_finished_runs(pool, tmp_path, monkeypatch, capsys):
    # A local Ray instance with its own token (Ray's default token auth would write one under the home directory).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    runs, out = tmp_path / "runs", tmp_path / "results"
    done = [j for j in pool.grid.jobs if not (j.experiment == "cartpole" and j.seed == 1)]
    for job in done:  # finished already; Ray trains CartPole's seed 1, with and without preferences
        shutil.copytree(job.run_dir, runs / job.name)
    stamps = {j.name: (runs / j.name / "metrics.csv").stat().st_mtime_ns for j in done}
    args = ["bench", str(SMOKE), "--runs", str(runs), "--out", str(out), "--no-progress"]
    assert main([*args, "--ray-address", "local", "--workers", "2"]) == 0
    assert "8 runs, 6 finished, 0 to resume, 2 to start, on Ray at local" in capsys.readouterr().err
    assert stamps == {j.name: (runs / j.name / "metrics.csv").stat().st_mtime_ns for j in done}
    rows = read_rows(out / "runs.csv")
    assert {(r["experiment"], r["method"], r["seed"]) for r in rows if r["timesteps"] == "4096"} == {
        (j.experiment, j.method, str(j.seed)) for j in pool.grid.jobs
    }
    assert "Runs finished: 8 of 8." in (out / "summary.md").read_text()
    assert (out / "returns.png").stat().st_size > 10_000


def test_a_ray_address_where_nothing_listens_is_refused_at_once(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["bench", str(SMOKE), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--ray-address", f"127.0.0.1:{port}"]) != 0
    err = capsys.readouterr().err
    assert f"--ray-address 127.0.0.1:{port}: nothing answers there" in err and "ray start --head" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[experiments]]\nexperimnt = "cartpole"', "unknown key 'experimnt'; did you mean 'experiment'?"),
        ('seed = [0]\n[[experiments]]\nexperiment = "cartpole"', "unknown key 'seed'; did you mean 'seeds'?"),
        ('[[experiments]]\nexperiment = "no-such-task"', "experiment 'no-such-task' not found"),
        ('[[experiments]]\nexperiment = "cartpole"\nenv = "CartPole-v1"', "exactly one of experiment"),
        ('labels = [0]\n[[experiments]]\nexperiment = "cartpole"', "labels = [0] must be a list of integers ≥ 1"),
        ('seeds = "0"\n[[experiments]]\nexperiment = "cartpole"', "'seeds' must be list"),
        ('set = ["labels.totl=3"]\n[[experiments]]\nenv = "CartPole-v1"', "did you mean 'labels.total'"),
        ('samplers = ["best"]\nlabels = [5]\n[[experiments]]\nenv = "CartPole-v1"', "is not one of uniform"),
        ('[[experiments]]\nenv = "CartPole-v1"\n[[experiments]]\nenv = "CartPole-v1"', "a second experiment named"),
        ('true_reward = false\n[[experiments]]\nenv = "CartPole-v1"', "nothing to run"),
        ('name = "a b"\n[[experiments]]\nenv = "CartPole-v1"', "grid name 'a b'"),
        ("seeds = [0]", "names no experiments"),
        ('[[experiments]]\nenv = "CartPole-v1"\nlabels = [5]\nbaseline = "hopper"', "baseline = 'hopper' is not an"),
        (
            '[[experiments]]\nenv = "CartPole-v1"\n[[experiments]]\nenv = "Acrobot-v1"\nlabels = [5]\n'
            'baseline = "CartPole-v1"',
            "'Acrobot-v1' runs Acrobot-v1 for 100000 steps, its baseline 'CartPole-v1' CartPole-v1 for",
        ),
        (
            '[[experiments]]\nenv = "CartPole-v1"\n[[experiments]]\nenv = "CartPole-v1"\nname = "b"\n'
            'labels = [5]\nbaseline = "CartPole-v1"\ntrue_reward = true',
            "drop true_reward = true",
        ),
    ],
)
def test_grid_file_mistakes_are_refused_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid(path, runs_dir=tmp_path / "runs")
    assert main(["bench", str(path), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefrl: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_mujoco_experiments_build_with_the_ppo_papers_settings():
    for name in MUJOCO:
        cfg = load_config(ROOT / "experiments" / f"{name}.toml")
        check_config(cfg)
        assert cfg.agent.normalize and cfg.labels.t0 == 2_000_000 and cfg.labels.initial_fraction == 0.25
        assert cfg.reward.members == 3 and cfg.reward.hidden == [64, 64] and cfg.labels.sampler == "disagreement"
    cfg = load_config(ROOT / "experiments" / "hopper.toml")
    agent = make_agent(cfg.agent, make_vec_env(cfg.env, seed=0), seed=0)
    norm = agent.get_vec_normalize_env()
    assert norm is not None and norm.gamma == agent.gamma == 0.99  # returns normalized with the agent's own γ
    assert (agent.n_steps, agent.batch_size, agent.n_epochs, agent.gae_lambda) == (2048, 64, 10, 0.95)
    assert isinstance(agent.policy.mlp_extractor.policy_net[1], torch.nn.Tanh)  # SB3's default 64×64 tanh nets
    assert default_segment_length(cfg.env) == 188  # ~1.5 s at dt = 0.008 (segments.length = 0) ...
    assert cfg.segments.length == 60  # ... but the file says the paper's 60 (1.5 s of video at 40 frames/s)
    swimmer = load_config(ROOT / "experiments" / "swimmer.toml")
    assert swimmer.segments.length == 60 and swimmer.reward.standardize_inputs


def test_normalization_statistics_survive_a_resume_and_reach_the_evaluation(tmp_path, monkeypatch, capsys):
    tiny = ["total_timesteps=4096", "labels.total=12", "eval_episodes=2", "baseline=false", "chunk_steps=1024",
            "segments.length=20", "reward.initial_epochs=10", "agent.normalize=true"]  # fmt: skip
    cfg = load_config(None, tiny)
    run = RunDir(tmp_path / "run")
    monkeypatch.setattr(checkpoint, "save", crash_after(2))
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run, progress=False)
    killed_at = run.read_state()["timesteps"]
    assert 0 < killed_at < cfg.total_timesteps
    monkeypatch.undo()
    loop.train(run.load_config(), run, progress=False)
    with np.load(run.ckpt / "normalize.npz") as saved:
        # Every observation since the start is in the statistics, not only those after the resume.
        assert float(saved["obs_rms_count"]) > cfg.total_timesteps
    assert main(["eval", str(run.path), "--episodes", "2"]) == 0
    assert "over 2 deterministic episodes" in capsys.readouterr().out
    assert main(["eval", str(run.path), "--episodes", "2", "--policy", "stochastic"]) == 0
    assert "over 2 sampled episodes" in capsys.readouterr().out


def test_periodic_evaluation_is_off_unless_asked_for():
    assert load_config(None, []).eval_every == 0


def test_the_summary_names_the_true_reward_agent_by_its_algorithm(tmp_path):
    (tmp_path / "g.toml").write_text(
        'name = "g"\nseeds = [0]\nlabels = [10]\n'
        '[[experiments]]\nenv = "CartPole-v1"\nname = "cp-a2c"\nset = ["agent.algo=\'A2C\'", "agent.kwargs={}"]\n'
        '[[experiments]]\nenv = "CartPole-v1"\nname = "cp-ppo"\n'
    )
    grid = load_grid(tmp_path / "g.toml", runs_dir=tmp_path / "runs")
    summary = write_summary(grid, [], tmp_path / "summary.md", randoms={}).read_text()
    assert "| cp-a2c | CartPole-v1 | A2C, true reward |" in summary
    assert "| cp-ppo | CartPole-v1 | PPO, true reward |" in summary


def test_the_summary_names_the_machines_and_commits_the_finished_runs_ran_on(tmp_path):
    (tmp_path / "g.toml").write_text(
        'name = "g"\nseeds = [0, 1]\nlabels = [10]\ntimesteps = 8000\n'
        '[[experiments]]\nenv = "CartPole-v1"\nname = "cp"\n'
    )
    grid = load_grid(tmp_path / "g.toml", runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    ran = {
        ("true", 0): ("Chip A, 2 cores, Python 3.11.7, torch 2.13.0+cpu", "aaaaaaa"),
        ("true", 1): ("Chip A, 2 cores, Python 3.11.7, torch 2.13.0+cpu", "bbbbbbb"),
        ("prefrl", 0): ("Chip A, 2 cores, Python 3.11.7, torch 2.13.0+cpu", "aaaaaaa"),
        ("prefrl", 1): ("Chip B, 2 cores, Python 3.11.7, torch 2.13.0+cpu", "ccccccc"),
    }
    for job in grid.jobs:
        where, commit = ran[job.method, job.seed]
        record = {"run": job.name, "commit": commit, "machine": f"{where}, commit {commit}", "rows": [],
                  "final": {"timesteps": 8000, "true_return": 1.0}}  # fmt: skip
        job.record.parent.mkdir(parents=True, exist_ok=True)
        job.record.write_text(json.dumps(record))
    header = write_summary(grid, [], tmp_path / "summary.md", randoms={}).read_text().split("\n\n")[1]
    assert header.startswith(
        "Machine: the finished runs ran on Chip A, 2 cores, Python 3.11.7, torch 2.13.0+cpu (3 runs at commits "
        "aaaaaaa, bbbbbbb); Chip B, 2 cores, Python 3.11.7, torch 2.13.0+cpu (1 run at commit ccccccc); "
        "tables written on "
    )
    assert "Runs finished: 4 of 4." in write_summary(grid, [], tmp_path / "summary.md", randoms={}).read_text()


def test_the_summary_shows_where_unfinished_runs_stand_beside_the_true_reward_run_at_the_same_steps(tmp_path):
    (tmp_path / "g.toml").write_text(
        'name = "g"\nseeds = [0, 1]\nlabels = [10]\ntimesteps = 8000\n'
        '[[experiments]]\nenv = "CartPole-v1"\nname = "cp"\n'
    )
    grid = load_grid(tmp_path / "g.toml", runs_dir=tmp_path / "runs")
    job = {(j.method, j.seed): j for j in grid.jobs}

    def row(method, seed, t, ret, labels_used):
        return {
            "experiment": "cp", "env": "CartPole-v1", "method": method, "labels": 10 if method == "prefrl" else 0,
            "sampler": "disagreement" if method == "prefrl" else "", "seed": seed, "timesteps": t,
            "true_return": ret, "predicted_return": math.nan, "labels_used": labels_used, "wall_s": 1.0,
        }  # fmt: skip

    rows = [
        row("true", 0, 2000, 20.0, 0),
        row("true", 0, 4000, 55.0, 0),
        row("prefrl", 0, 2000, 12.0, 6),
        row("prefrl", 0, 4000, 31.5, 8),
        row("prefrl", 1, 2000, 9.0, 6),  # seed 1's true-reward run has not been evaluated yet
    ]
    summary = write_summary(grid, rows, tmp_path / "summary.md", randoms={}).read_text()
    table = summary.split("## Runs part-way")[1].splitlines()
    assert f"| {job['prefrl', 0].name} | 4k of 8k | 8 | 31.5 | 55.0 |" in table
    assert f"| {job['prefrl', 1].name} | 2k of 8k | 6 | 9.0 | — |" in table
    assert f"| {job['true', 0].name} | 4k of 8k | — | 55.0 | — |" in table
    assert not any(job["true", 1].name in line for line in table)  # nothing evaluated, nothing to show


def test_a_run_that_wrote_down_what_auto_settles_to_is_the_run_the_grid_asks_for(pool, tmp_path):
    """Recorded runs made when ``labels.ends_share`` defaulted to 0.5 are the ones a grid leaving it to ``auto``
    (0.5 off Atari) asks for; a value ``auto`` does not settle to is still refused."""
    job = next(j for j in pool.grid.jobs if j.method == "prefrl" and j.experiment == "cartpole")
    runs = tmp_path / "runs"
    shutil.copytree(pool.runs, runs)
    saved = RunDir(runs / job.run_dir.name)
    for share, accepted in ((0.5, True), (0.25, False)):
        saved.save_config(
            dataclasses.replace(job.config, labels=dataclasses.replace(job.config.labels, ends_share=share))
        )
        if accepted:
            assert load_grid(SMOKE, runs_dir=runs).jobs
        else:
            with pytest.raises(
                ConfigError, match=re.escape("was started with labels.ends_share = 0.25, the grid now gives 0.5")
            ):
                load_grid(SMOKE, runs_dir=runs)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "grids").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_grid_accepts_the_finished_runs_its_committed_results_record(path, tmp_path):
    """A fresh checkout goes on with a grid from its committed records: a changed default must not refuse them."""
    results = ROOT / "benchmarks" / "results" / tomllib.loads(path.read_text())["name"]
    grid = load_grid(path, runs_dir=tmp_path / "runs", out_dir=results)  # refuses a record made otherwise
    records = set((results / "finished").glob("*.json"))
    assert {j.record for j in grid.jobs if j.record.exists()} == records  # each record is a run of the grid


LONG_GRID = 'name = "long"\nseeds = [0]\nlabels = []\ntimesteps = 10_000_000\n[[experiments]]\nenv = "CartPole-v1"\n'


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a parent that no longer reaps it does not, where /proc tells)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


def _start_long_grid(tmp_path):
    """``prefrl bench`` on a run far too long to finish, and the pid of the pool worker training it."""
    (tmp_path / "long.toml").write_text(LONG_GRID)
    run_dir = load_grid(tmp_path / "long.toml", runs_dir=tmp_path / "runs").jobs[0].run_dir
    cmd = [sys.executable, "-m", "prefrl.cli", "bench", str(tmp_path / "long.toml"), "--workers", "1"]
    cmd += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-progress"]
    parent = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    lock = run_dir / "train.lock"

    def holder() -> int:  # a run stopped by a signal leaves its last holder's name behind
        words = lock.read_text().split() if lock.exists() else []
        return int(words[1]) if len(words) > 1 and words[0] == "process" and _alive(int(words[1])) else 0

    assert _until(holder, 180), "no worker took the run"
    worker = holder()
    assert worker != parent.pid and _alive(worker)
    return parent, worker, run_dir


def test_a_killed_bench_stops_its_workers_and_frees_their_runs(tmp_path):
    """``kill`` stops the grid as Ctrl-C does; ``kill -9`` leaves workers that notice and end themselves. Either
    way no worker trains on unwatched, and the run is free for the next ``prefrl bench`` to resume."""
    parent, worker, run_dir = _start_long_grid(tmp_path)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130 and "run the same `prefrl bench` command again to resume" in err
    assert "Traceback" not in err and "leaked" not in err  # the worker unwound, as from Ctrl-C
    assert _until(lambda: not _alive(worker), 10)
    assert (tmp_path / "out" / "summary.md").exists()  # the results so far
    with training_lock(run_dir):
        pass

    parent, worker, run_dir = _start_long_grid(tmp_path)
    parent.kill()
    parent.wait(timeout=30)
    assert _until(lambda: not _alive(worker), 20)
    with training_lock(run_dir):
        pass


def test_a_second_trainer_of_a_run_is_refused_while_another_process_trains_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    hold = "import sys, time\nfrom prefrl.run import training_lock\nwith training_lock(sys.argv[1]):\n"
    hold += "    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        rc = main(["train", "--run-dir", str(run_dir), "--set", "total_timesteps=2048", "--no-progress"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 2 and f"{run_dir} is in use: process {holder.pid} on " in err and "is training it" in err
    assert not (run_dir / "config.toml").exists()  # refused before it touched the run
    with training_lock(run_dir):  # free once its holder is gone, however it ended
        assert (run_dir / "train.lock").read_text().startswith(f"process {os.getpid()} on ")
