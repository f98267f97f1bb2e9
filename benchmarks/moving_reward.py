"""What differs between the seeds a preference run wins and the ones it loses: one row per run.

For each run directory given (preference runs of the same experiment, different seeds), from its
``metrics.csv`` and ``labels.sqlite``:

- the final true return;
- the validation split of the first fit (held-out comparisons) and the validation accuracy first and last;
- which pairs were asked: share of ties, median |true-return gap| of the answered pairs, before RL and after;
- the reward's zero and spread after each refit (``reward/norm_shift``, ``reward/norm_scale``): the largest
  jump from one refit to the next, relative to the spread;
- the critic's error on the last rollout before and after each refit (``agent/critic_error``,
  ``agent/critic_error_refit``, mean squared error over the returns' variance): median of both, and of their
  ratio;
- the rollout's true return (mean of the last 100 training episodes) after the first chunk, at its lowest and
  when (thousands of steps), and at the end, beside the predicted return at the end.

    python benchmarks/moving_reward.py RUN [RUN ...] > table.md
    python benchmarks/moving_reward.py --compare "PPO=runs/ppo" "SAC=runs/sac"   # final returns, seed by seed
    python benchmarks/moving_reward.py --normalize CartPole-v1 runs/cartpole runs/cartpole-true
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sqlite3
import statistics
from pathlib import Path

from prefrl.data import TIE


def floats(rows: list[dict[str, str]], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key, "")
        if v not in ("", None) and not math.isnan(float(v)):
            out.append(float(v))
    return out


def pair_stats(db: Path, initial: int) -> dict[str, float]:
    con = sqlite3.connect(db)
    seg = dict(con.execute("SELECT id, true_return FROM segments"))
    rows = con.execute("SELECT segment_ids, label FROM comparisons ORDER BY seq").fetchall()
    con.close()
    gaps, ties = [], []
    for ids, label in rows:
        a, b = json.loads(ids)[:2]
        gaps.append(abs(seg[a] - seg[b]))
        ties.append(label == TIE)
    before, after = gaps[:initial], gaps[initial:]
    return {
        "gap0": statistics.median(before) if before else math.nan,
        "gap1": statistics.median(after) if after else math.nan,
        "ties": sum(ties) / max(len(ties), 1),
    }


def summarize(run: Path) -> dict[str, float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    first = rows[0]
    shift, scale = floats(rows, "reward/norm_shift"), floats(rows, "reward/norm_scale")
    jumps = [abs(b - a) / s for a, b, s in zip(shift, shift[1:], scale[1:], strict=False)]
    spread = [b / a for a, b in itertools.pairwise(scale)]
    before, after = floats(rows, "agent/critic_error"), floats(rows, "agent/critic_error_refit")
    ratio = [b / a for a, b in zip(before, after, strict=True) if a > 0]
    out = {
        "final": floats(rows, "eval/true_return")[-1],
        "n_val0": float(first["reward/n_val"]),
        "val_acc0": float(first["reward/val_acc"]),
        "val_acc_end": floats(rows, "reward/val_acc")[-1],
        "shift_jump_max": max(jumps) if jumps else math.nan,
        "scale_change_max": max(max(spread), 1 / min(spread)) if spread else math.nan,
        "critic_before": statistics.median(before) if before else math.nan,
        "critic_after": statistics.median(after) if after else math.nan,
        "critic_ratio_max": max(ratio) if ratio else math.nan,
        "true_start": floats(rows, "rollout/true_return")[0],
        "true_low": min(floats(rows, "rollout/true_return")),
        "low_at_k": min(
            (float(r["rollout/true_return"]), float(r["timesteps"]) / 1000)
            for r in rows
            if r.get("rollout/true_return") not in ("", None)
        )[1],
        "true_end": floats(rows, "rollout/true_return")[-1],
        "pred_end": floats(rows, "rollout/predicted_return")[-1],
    }
    return out | pair_stats(run / "labels.sqlite", int(float(first["labels/total"])))


def compare(groups: list[str], seeds: int = 0) -> None:
    """One row per ``NAME=DIR`` (DIR holding one run directory per seed, ``s0``, ``s1``, ...): each seed's final
    true return, their mean and the worst of them, and the mean wall time per run."""
    table = []
    for group in groups:
        name, _, folder = group.rpartition("=")
        runs = sorted(Path(folder).glob("s[0-9]*/"), key=lambda p: int(p.name[1:]))[: seeds or None]
        finals, walls = [], []
        for run in runs:
            rows = list(csv.DictReader((run / "metrics.csv").open()))
            finals.append(floats(rows, "eval/true_return")[-1])
            walls.append(floats(rows, "wall_s")[-1])
        table.append((name, finals, walls))
    n = max(len(f) for _, f, _ in table)
    print("| candidate | " + " | ".join(f"seed {i}" for i in range(n)) + " | mean | worst | wall s per run |")
    print("|---|" + "---:|" * (n + 3))
    for name, finals, walls in table:
        seeds = [f"{v:.0f}" for v in finals] + ["—"] * (n - len(finals))
        print(
            f"| {name} | " + " | ".join(seeds) + f" | {statistics.mean(finals):.0f} | {min(finals):.0f} | "
            f"{statistics.mean(walls):.0f} |"
        )


def normalized(env_id: str, pref: Path, true: Path) -> None:
    """Seed by seed: the preference run's final return, the true-reward run's, and the normalized score
    (return − random) / (true-reward − random)."""
    from prefrl.bench.report import random_return
    from prefrl.config import load_config

    rnd = random_return(load_config(None, [f"env.id='{env_id}'"], base={}), episodes=100)
    print(f"{env_id}: random policy {rnd:.1f} (100 episodes)\n")
    print("| seed | from preferences | true reward | normalized |")
    print("|---:|---:|---:|---:|")
    for run in sorted(pref.glob("s[0-9]*/"), key=lambda p: int(p.name[1:])):
        mine = floats(list(csv.DictReader((run / "metrics.csv").open())), "eval/true_return")[-1]
        base = floats(list(csv.DictReader((true / run.name / "metrics.csv").open())), "eval/true_return")[-1]
        print(f"| {run.name[1:]} | {mine:.1f} | {base:.1f} | {(mine - rnd) / (base - rnd):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--compare", nargs="+", metavar="NAME=DIR", help="a row of final returns per group of seeds")
    p.add_argument("--seeds", type=int, default=0, help="--compare: only seeds 0 to N-1 (default: all)")
    p.add_argument("--normalize", nargs=3, metavar=("ENV_ID", "PREF_DIR", "TRUE_DIR"), help="normalized scores")
    args = p.parse_args()
    if args.normalize:
        env_id, pref, true = args.normalize
        normalized(env_id, Path(pref), Path(true))
        return
    if args.compare:
        compare(args.compare, args.seeds)
        return
    rows = [(run.name, summarize(run)) for run in args.runs]
    keys = list(rows[0][1])
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, r in sorted(rows, key=lambda x: -x[1]["final"]):
        print(f"| {name} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
