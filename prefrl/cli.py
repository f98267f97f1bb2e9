"""``prefrl train | label | export | eval | plot | bench``: the command line.

Every user mistake ends in one line on stderr naming the problem and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefrl.config import ConfigError, TrainConfig, load_config
from prefrl.data import DataError

if TYPE_CHECKING:
    from prefrl.run import RunDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefrl", description="Deep RL from human preferences.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="learn a task from preference comparisons (default: CartPole quickstart)")
    p.add_argument("experiment", nargs="?",
                   help="experiment TOML, or the name of a shipped one, e.g. pendulum (default: the embedded CartPole "
                        "quickstart)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set labels.total=500 (repeatable)")  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/NAME-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads (default: 1, or torch's own choice for image observations)")  # fmt: skip
    p.add_argument("--oracle", choices=["synthetic", "human"], help="who answers (same as --set oracle.kind=...)")
    p.add_argument(
        "--simulate-labeler",
        action="store_true",
        help="--oracle human, answered over the labeler's HTTP API by the configured synthetic teacher",
    )
    _serve_args(p)

    p = sub.add_parser("label", help="serve the web labeler for a run (people compare clips in a browser)")
    p.add_argument("run", type=Path, help="the run directory (its labels.sqlite holds the queue)")
    _serve_args(p)

    p = sub.add_parser("export", help="write a run's comparisons (and the segments they compare) to one file")
    p.add_argument("run", type=Path)
    p.add_argument("--format", dest="fmt", choices=["csv", "npz"], default="npz",
                   help="npz: comparisons and segments (replayable); csv: one row per comparison")  # fmt: skip
    p.add_argument("--out", type=Path, help="output file (default: RUN/labels.FORMAT)")

    p = sub.add_parser("eval", help="evaluate a run's policy on the true reward")
    p.add_argument("run", type=Path)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--policy", choices=["auto", "deterministic", "stochastic"],
                   help="how the policy acts (default: the run's eval_policy; auto samples on Atari only)")  # fmt: skip
    p.add_argument("--reward-of", type=Path, metavar="RUN",
                   help="also score each episode with this preference run's learned reward (default: the "
                        "run's own, if any), e.g. a true-reward agent under another run's reward")  # fmt: skip
    p.add_argument("--labels", type=int, metavar="N",
                   help="score with that run's reward fit afresh to its first N labels instead of its final one: "
                        "what it paid for earlier in the run")  # fmt: skip
    p.add_argument("--window", type=int, metavar="T",
                   help="with a learned reward, cut the episodes into T-step pieces and report how often the reward "
                        "orders two of them as their true returns do (default: that run's segment length)")  # fmt: skip

    p = sub.add_parser("plot", help="(re)draw a run's plots")
    p.add_argument("run", type=Path)

    p = sub.add_parser("bench", help="run a grid of experiments × methods × seeds; tables and plots of the results")
    p.add_argument(
        "grid", type=Path, help="grid TOML, or the name of a shipped one, e.g. canary (see benchmarks/grids/)"
    )
    p.add_argument("--workers", type=int, default=2, help="runs at once (local processes, or Ray tasks in flight)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run on Ray: auto, HOST:PORT of a running cluster, or local (start one here)")  # fmt: skip
    p.add_argument("--runs", type=Path, help="run directories (default: benchmarks/runs/GRID)")
    p.add_argument("--out", type=Path, help="results: runs.csv, summary.md, plots (default: benchmarks/results/GRID)")
    p.add_argument("--status", action="store_true", help="show where every run stands and rewrite the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        commands = {"train": _train, "label": _label, "export": _export, "eval": _eval, "plot": _plot, "bench": _bench}
        return commands[args.command](args)
    except (ConfigError, DataError, FileNotFoundError, FloatingPointError) as e:
        print(f"prefrl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefrl: interrupted; resume with `prefrl train --resume RUN`", file=sys.stderr)
        return 130


def _text_run(args: argparse.Namespace) -> bool:
    """Whether ``prefrl train`` was given a text experiment (``kind = "text"``) or a text run to resume."""
    from prefrl.text.rlhf import is_text_config

    if args.resume is not None:
        return is_text_config(args.resume / "config.toml")
    return args.experiment is not None and is_text_config(args.experiment)


def _train_text(args: argparse.Namespace) -> int:
    from prefrl.config import TrainConfig
    from prefrl.text.rlhf import load_text_config, plot_text, train_text

    if args.simulate_labeler:
        args.oracle = "human"
    if args.resume is not None:
        if args.experiment or args.overrides:
            raise ConfigError("--resume takes the run's saved config; drop the experiment file and --set")
        path = args.resume
        cfg = load_text_config(path / "config.toml")
        if args.oracle and args.oracle != cfg.oracle.kind:
            raise ConfigError(f"--oracle {args.oracle}: the run was started with oracle.kind = '{cfg.oracle.kind}'")
    else:
        cfg = load_text_config(
            args.experiment, args.overrides + ([f"oracle.kind={args.oracle}"] if args.oracle else [])
        )
        path = args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    people = cfg.oracle.kind == "human" and cfg.reward_source == "learned"
    if args.db and not people:
        raise ConfigError("--db names the web labeler's label store; it needs --oracle human")
    print(f"prefrl: run directory {path}", file=sys.stderr)
    if people:  # text segments are shown as text: the labeler needs only the task
        path.mkdir(parents=True, exist_ok=True)
        result = _with_labeler(
            args,
            path,
            TrainConfig(task=cfg.task),
            name=f"simulated-{cfg.oracle.teacher}",
            train_fn=lambda oracle, simulate: train_text(
                cfg, path, progress=not args.no_progress, oracle=oracle, on_start=lambda run: simulate(run.oracle)
            ),
        )
    else:
        result = train_text(cfg, path, progress=not args.no_progress)
    print(
        f"prefrl: {cfg.model}, {cfg.reward_source} reward, {result['labels']} labels: held-out score "
        f"{result['eval/score']:.3f} (judge {result['eval/judge']:.3f}) at KL {result['eval/kl']:.2f}",
        file=sys.stderr,
    )
    for plot in plot_text(path):
        print(f"prefrl: wrote {plot}", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from prefrl.make import check_config
    from prefrl.run import RunDir, training_lock
    from prefrl.shipped import resolve

    if args.experiment is not None and args.resume is None:
        args.experiment = str(resolve(args.experiment, "experiments"))
    if _text_run(args):
        return _train_text(args)
    if args.simulate_labeler:
        args.oracle = "human"
    if args.resume is not None:
        if args.experiment or args.overrides:
            raise ConfigError("--resume takes the run's saved config; drop the experiment file and --set")
        run = RunDir(args.resume)
        cfg = run.load_config()
        if args.oracle and args.oracle != cfg.oracle.kind:
            raise ConfigError(f"--oracle {args.oracle}: the run was started with oracle.kind = '{cfg.oracle.kind}'")
    else:
        overrides = args.overrides + ([f"oracle.kind={args.oracle}"] if args.oracle else [])
        cfg = load_config(args.experiment, overrides)
        run = RunDir(args.run_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_config(cfg)
    if args.db and not (cfg.oracle.kind == "human" and cfg.reward_source == "learned"):
        raise ConfigError("--db names the web labeler's label store; it needs --oracle human")
    print(f"prefrl: run directory {run.path}", file=sys.stderr)
    set_torch_threads(args.threads, cfg)
    with training_lock(run.path):  # the baseline's and the labeler's time too: refused before either starts
        return _train_run(args, cfg, run)


def set_torch_threads(threads: int, cfg: TrainConfig) -> None:
    """``threads`` torch threads for a control run; 0: one, unless the observations are images. The agent's and the
    reward model's MLPs are so small that a second thread costs more in keeping the two in step than it gives back
    (Pendulum with SAC, one process on 2 cores: 47 s with one thread, 75 s with two, median wall of 3 runs); the
    Atari CNNs gain from every core."""
    import torch

    from prefrl.make import env_kind

    if threads < 0:
        raise ConfigError(f"--threads {threads}: give a number of threads ≥ 1, or 0 for the default")
    if threads == 0 and env_kind(cfg.env) == "atari":
        return
    torch.set_num_threads(threads or 1)


def _train_run(args: argparse.Namespace, cfg: TrainConfig, run: RunDir) -> int:
    from prefrl.loop import train
    from prefrl.run import RunDir

    if cfg.oracle.kind == "human" and cfg.reward_source == "learned":
        return _train_with_labeler(args, cfg, run)
    if cfg.baseline and cfg.reward_source == "learned":
        base_cfg = dataclasses.replace(cfg, reward_source="true", baseline=False, name=f"{cfg.name}-true-reward")
        base = train(base_cfg, RunDir(run.path / "baseline"), progress=not args.no_progress)
        print(f"prefrl: true-reward baseline: eval return {base.true_return:.1f}", file=sys.stderr)
    result = train(cfg, run, progress=not args.no_progress)
    label = {
        "true": f"{cfg.agent.algo}, true reward",
        "frozen": f"{cfg.agent.algo}, the reward {cfg.reward_from} learned",
    }.get(cfg.reward_source, f"prefrl, {cfg.labels.total} labels")
    print(f"prefrl: {label}: eval return {result.true_return:.1f} after {result.timesteps} steps", file=sys.stderr)
    for path in _draw_plots(run, cfg):
        print(f"prefrl: wrote {path}", file=sys.stderr)
    return 0


def _draw_plots(run: RunDir, cfg: TrainConfig) -> list[Path]:
    """The run's own plots, and the comparison with its true-reward baseline when it has one."""
    from prefrl.plots import plot_comparison, plot_run

    plots = plot_run(run.path)
    if (run.path / "baseline" / "metrics.csv").exists():
        runs = {f"{cfg.agent.algo}, true reward": run.path / "baseline", f"prefrl, {cfg.labels.total} labels": run.path}
        plots.append(plot_comparison(runs, run.plots / "comparison.png", title=f"{cfg.env.id}: learned vs true reward"))
    return plots


def _serve_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("web labeler")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback needs a token")
    g.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    g.add_argument("--token", help="access token (generated when listening beyond loopback)")
    g.add_argument("--db", metavar="URL",
                   help="label store: a SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db (default: "
                        "the run's labels.sqlite); give `prefrl label` the same URL")  # fmt: skip
    g.add_argument("--clip-fps", type=int, default=30,
                   help="most frames a second in a clip, played in real time by skipping steps (0: all)")  # fmt: skip
    g.add_argument("--clip-size", type=int, default=256, help="longer side of a clip in pixels")
    g.add_argument("--clip-effects", action="store_true",
                   help="MuJoCo shadows, reflections, skybox, antialiasing (many times slower to render)")  # fmt: skip
    g.add_argument("--render-workers", type=int, default=0,
                   help="processes rendering clips (0: one per core, at most 4)")  # fmt: skip
    g.add_argument("--prefetch", type=int, default=10,
                   help="queued questions whose clips are rendered ahead of the labelers")  # fmt: skip


def _labeler(args: argparse.Namespace, run_path: Path, cfg) -> Any:
    from prefrl.labeler import LabelerServer

    if args.clip_size < 16 or args.clip_size > 2048 or min(args.clip_fps, args.render_workers, args.prefetch) < 0:
        raise ConfigError("--clip-size must be 16..2048; --clip-fps, --render-workers and --prefetch ≥ 0")
    try:
        return LabelerServer(
            args.db or run_path / "labels.sqlite",
            clip_dir=run_path / "clips",
            host=args.host,
            port=args.port,
            task=cfg.task,
            token=args.token,
            env_kwargs=dict(cfg.env.kwargs),
            clip_fps=args.clip_fps,
            clip_size=args.clip_size,
            clip_effects=args.clip_effects,
            render_workers=args.render_workers,
            prefetch=args.prefetch,
        )
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None


def _announce(server: Any) -> None:
    print(f"prefrl: labeler at {server.url}", file=sys.stderr, flush=True)
    if server.token:
        print("prefrl: the token in that URL is required from every labeler; share it only with them", file=sys.stderr)


def _label(args: argparse.Namespace) -> int:
    from prefrl.config import TrainConfig
    from prefrl.run import RunDir

    run = RunDir(args.run)
    if args.db is None and not run.labels_path.exists():
        raise FileNotFoundError(f"{run.path}: no labels.sqlite; start the run with `prefrl train EXP --oracle human`")
    from prefrl.text.rlhf import is_text_config

    saved = run.path / "config.toml"
    if saved.exists() and is_text_config(saved):  # text segments are shown as text: only the task is needed
        from prefrl.text.rlhf import load_text_config

        cfg = TrainConfig(task=load_text_config(saved).task)
    else:
        cfg = run.load_config() if saved.exists() else TrainConfig()
    server = _labeler(args, run.path, cfg)
    _announce(server)
    try:
        server.run()
    finally:
        server.clips.close()
    return 0


def _with_labeler(args: argparse.Namespace, run_path: Path, cfg, *, name: str, train_fn: Any) -> Any:
    """Serve the web labeler beside ``train_fn(oracle, simulate)``, which trains with ``oracle`` (the labeler's
    queue) and calls ``simulate(teacher)`` once it has its synthetic teacher: with --simulate-labeler that
    teacher then answers over the HTTP API, as ``name``."""
    import threading

    from prefrl.labeler import simulate_labeler
    from prefrl.oracles import HumanOracle

    server = _labeler(args, run_path, cfg)
    if args.db and args.resume is None and not server.queue.is_empty():
        server.stop()
        raise ConfigError(
            f"--db {server.queue.shown} already holds another run's questions; give each run its own database "
            "(or --resume the run that made them)"
        )
    server.start()
    _announce(server)
    stop, helpers = threading.Event(), []

    def simulate(teacher: Any) -> None:
        if args.simulate_labeler:
            helpers.append(
                threading.Thread(
                    target=simulate_labeler,
                    args=(server.api, server.queue, teacher),
                    kwargs={"stop": stop, "token": server.token, "name": name},
                    daemon=True,
                )
            )
            helpers[-1].start()

    try:
        return train_fn(HumanOracle(server.queue), simulate)
    finally:
        stop.set()
        for helper in helpers:
            helper.join(timeout=10)
        server.stop()


def _train_with_labeler(args: argparse.Namespace, cfg, run) -> int:
    """Train while people (or, with --simulate-labeler, a synthetic teacher over HTTP) answer in the labeler."""
    import dataclasses as dc

    from prefrl.loop import train
    from prefrl.make import clip_state_fn, make_oracle
    from prefrl.plots import plot_run

    clip_state_fn(cfg)  # refuses environments whose clips cannot be rendered, before any compute

    def go(oracle: Any, simulate: Any) -> Any:
        simulate(make_oracle(dc.replace(cfg.oracle, kind="synthetic"), seed=cfg.seed))
        return train(cfg, run, oracle=oracle, progress=not args.no_progress)

    result = _with_labeler(args, run.path, cfg, name=f"simulated-{cfg.oracle.teacher}", train_fn=go)
    for path in plot_run(run.path):
        print(f"prefrl: wrote {path}", file=sys.stderr)
    summary = f"eval return {result.true_return:.1f} after {result.timesteps} steps, {result.labels} labels"
    print(f"prefrl: {summary}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from prefrl.export import export_run

    path, n = export_run(args.run, fmt=args.fmt, out=args.out)
    print(f"prefrl: wrote {n} comparisons to {path}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from prefrl.checkpoint import restore_normalization
    from prefrl.evaluation import eval_deterministic, evaluate
    from prefrl.make import make_agent, make_eval_env, segment_length
    from prefrl.reward.load import load_reward, refit_reward
    from prefrl.run import RunDir

    run = RunDir(args.run)
    cfg = dc.replace(run.load_config(), eval_episodes=args.episodes)
    if args.policy:
        cfg = dc.replace(cfg, eval_policy=args.policy)
    if not (run.ckpt / "agent.zip").exists():
        raise FileNotFoundError(f"{run.path}: no checkpoint yet (checkpoint/agent.zip); let the run train a chunk")
    fresh = make_agent(cfg.agent, make_eval_env(cfg), seed=cfg.seed)
    env = fresh.get_env() if cfg.agent.normalize else None  # a VecNormalize to hold the saved statistics
    agent = type(fresh).load(run.ckpt / "agent.zip", env=env, device=cfg.agent.device)
    restore_normalization(agent, run)
    reward_run = args.reward_of or (run.path if (run.ckpt / "reward.pt").exists() else None)
    reward, window = None, 0
    if reward_run is not None:
        other = RunDir(reward_run)
        other_cfg = other.load_config()
        if (env_id := other_cfg.env.id) != cfg.env.id:
            raise ConfigError(
                f"--reward-of {reward_run}: its reward was learned on {env_id}, this run acts on {cfg.env.id}; "
                "give a run of the same environment"
            )
        window = segment_length(other_cfg) if args.window is None else args.window
        if window < 1:
            raise ConfigError(f"--window {window}: give a piece length of at least 1 step, e.g. the segment length")
        reward = load_reward(other) if args.labels is None else refit_reward(other, args.labels)
    elif args.labels is not None or args.window is not None:
        flag = f"--labels {args.labels}" if args.labels is not None else f"--window {args.window}"
        raise ConfigError(f"{flag}: {run.path} learns no reward; name a preference run with --reward-of")
    result = evaluate(agent, cfg, reward=reward, window=window)
    print(
        f"{cfg.env.id}: true return {result['eval/true_return']:.2f} ± {result['eval/true_return_std']:.2f} "
        f"over {args.episodes} {'deterministic' if eval_deterministic(cfg) else 'sampled'} episodes "
        f"(mean length {result['eval/ep_len']:.1f})"
    )
    if reward is not None:
        which = f"the reward of {reward_run}" + (
            "" if args.labels is None else f" refit to its first {args.labels} labels"
        )
        print(
            f"learned return under {which}: {result['eval/learned_return']:.2f} ± "
            f"{result['eval/learned_return_std']:.2f} (the normalized reward its agent was trained on)"
        )
        if math.isnan(result["eval/window_agreement"]):
            print(
                f"{window}-step pieces of this play: no two of them have different true returns, so none to rank "
                "(as when the true reward is the same every step and only an episode's end differs)"
            )
        else:
            print(
                f"{window}-step pieces of this play: the learned reward orders {result['eval/window_agreement']:.1%} "
                f"of the pairs with different true returns as the true reward does (correlation "
                f"{result['eval/window_corr']:.2f}, {result['eval/windows']:.0f} pieces)"
            )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from prefrl.run import RunDir
    from prefrl.text.rlhf import is_text_config, plot_text

    run = RunDir(args.run)
    paths = plot_text(args.run) if is_text_config(args.run / "config.toml") else _draw_plots(run, run.load_config())
    for path in paths:
        print(f"prefrl: wrote {path}")
    return 0


def _times(s: dict[str, Any]) -> str:
    """`` 2.1 h so far, ~6.3 h to go`` for a ``status`` row: time trained and, part-way, the estimate."""
    if s["state"] == "not started" or not math.isfinite(s["wall_s"]):
        return ""
    text = f"  {_hours(s['wall_s'])} so far"
    return text + f", ~{_hours(s['eta_s'])} to go" if s["state"] == "part-way" else text


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _bench(args: argparse.Namespace) -> int:
    from prefrl.bench import load_grid, run_grid, status, write_results
    from prefrl.shipped import resolve

    grid = load_grid(resolve(args.grid, "grids"), runs_dir=args.runs, out_dir=args.out)
    if args.status:
        for s in status(grid):
            print(f"{s['run']:<48} {s['state']:<12} {s['timesteps']:>10,} / {s['total']:,} steps{_times(s)}")
        for path in write_results(grid):
            print(f"prefrl: wrote {path}", file=sys.stderr)
        return 0
    try:
        report = run_grid(grid, workers=args.workers, ray_address=args.ray_address,
                          progress=not args.no_progress)  # fmt: skip
    except KeyboardInterrupt:
        print("prefrl: interrupted; run the same `prefrl bench` command again to resume the grid", file=sys.stderr)
        return 130
    for path in report.written:
        print(f"prefrl: wrote {path}", file=sys.stderr)
    for name, error in report.failed.items():
        print(f"prefrl: error: run {name} failed: {error}", file=sys.stderr)
    print(f"prefrl: {report.finished} of {report.planned} runs finished", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
