"""``prefrl train | eval | plot``: the command line.

Every user mistake ends in one line on stderr naming the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from prefrl.config import ConfigError, load_config
from prefrl.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefrl", description="Deep RL from human preferences.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="learn a task from preference comparisons (default: CartPole quickstart)")
    p.add_argument("experiment", nargs="?", help="experiment TOML (default: the embedded CartPole quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set labels.total=500 (repeatable)")  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/NAME-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("eval", help="evaluate a run's policy on the true reward")
    p.add_argument("run", type=Path)
    p.add_argument("--episodes", type=int, default=20)

    p = sub.add_parser("plot", help="(re)draw a run's plots")
    p.add_argument("run", type=Path)

    args = parser.parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "plot": _plot}[args.command](args)
    except (ConfigError, DataError, FileNotFoundError, FloatingPointError) as e:
        print(f"prefrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefrl: interrupted; resume with `prefrl train --resume RUN`", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from prefrl.loop import check_config, train
    from prefrl.plots import plot_comparison, plot_run
    from prefrl.run import RunDir

    if args.resume is not None:
        if args.experiment or args.overrides:
            raise ConfigError("--resume takes the run's saved config; drop the experiment file and --set")
        run = RunDir(args.resume)
        cfg = run.load_config()
    else:
        cfg = load_config(args.experiment, args.overrides)
        run = RunDir(args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_config(cfg)
    print(f"prefrl: run directory {run.path}", file=sys.stderr)
    runs: dict[str, Path] = {}
    if cfg.baseline and cfg.reward_source == "learned":
        base_cfg = dataclasses.replace(cfg, reward_source="true", baseline=False, name=f"{cfg.name}-true-reward")
        base = train(base_cfg, RunDir(run.path / "baseline"), progress=not args.no_progress)
        runs[f"{cfg.agent.algo}, true reward"] = base.run.path
        print(f"prefrl: true-reward baseline: eval return {base.true_return:.1f}", file=sys.stderr)
    result = train(cfg, run, progress=not args.no_progress)
    label = f"{cfg.agent.algo}, true reward" if cfg.reward_source == "true" else f"prefrl, {cfg.labels.total} labels"
    runs[label] = run.path
    plots = plot_run(run.path)
    if len(runs) > 1:
        plots.append(plot_comparison(runs, run.plots / "comparison.png", title=f"{cfg.env.id}: learned vs true reward"))
    print(f"prefrl: {label}: eval return {result.true_return:.1f} after {result.timesteps} steps", file=sys.stderr)
    for path in plots:
        print(f"prefrl: wrote {path}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from prefrl.loop import evaluate, make_eval_env
    from prefrl.make import make_agent
    from prefrl.run import RunDir

    run = RunDir(args.run)
    cfg = dc.replace(run.load_config(), eval_episodes=args.episodes)
    if not (run.ckpt / "agent.zip").exists():
        raise FileNotFoundError(f"{run.path}: no checkpoint yet (checkpoint/agent.zip); let the run train a chunk")
    venv = make_eval_env(cfg)
    agent = type(make_agent(cfg.agent, venv, seed=cfg.seed)).load(run.ckpt / "agent.zip", device=cfg.agent.device)
    result = evaluate(agent, cfg)
    print(
        f"{cfg.env.id}: true return {result['eval/true_return']:.2f} ± {result['eval/true_return_std']:.2f} "
        f"over {args.episodes} episodes (mean length {result['eval/ep_len']:.1f})"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from prefrl.plots import plot_comparison, plot_run
    from prefrl.run import RunDir

    run = RunDir(args.run)
    cfg = run.load_config()
    plots = plot_run(run.path)
    if (run.path / "baseline" / "metrics.csv").exists():
        runs = {f"{cfg.agent.algo}, true reward": run.path / "baseline", f"prefrl, {cfg.labels.total} labels": run.path}
        plots.append(plot_comparison(runs, run.plots / "comparison.png", title=f"{cfg.env.id}: learned vs true reward"))
    for path in plots:
        print(f"prefrl: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
