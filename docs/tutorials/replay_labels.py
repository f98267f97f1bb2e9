"""Tutorial: export the labels of one run and replay them into another.

Run it from the repository root (well under a minute on a laptop CPU):

    python docs/tutorials/replay_labels.py --out runs/tutorial-replay

Run A learns Pendulum from 30 synthetic comparisons. Its labels are exported twice: as ``labels.npz``
(comparisons *and* the segments they compare; replayable) and as ``labels.csv`` (one row per comparison,
for a spreadsheet). Run B, with another seed, takes its reward from the npz file alone: no oracle is asked
anything. The same works for labels that people gave in the web labeler, which is what makes them reusable.
Everything goes under ``--out``; ``summary.json`` there holds the numbers it prints.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

# Tiny budgets, so that the tutorial runs in seconds; the same keys as in an experiment file.
TINY = [
    "name=pendulum-tiny",
    "env.id=Pendulum-v1",
    "env.n_envs=4",
    "total_timesteps=2048",
    "chunk_steps=1024",
    "eval_episodes=3",
    "labels.total=30",
    "reward.initial_epochs=20",
    "reward.epochs=5",
    "reward.min_steps=20",
    "agent.kwargs={n_steps = 128, batch_size = 64}",
]


def main(out: Path) -> dict:
    from prefrl.config import load_config
    from prefrl.data import SKIP, ComparisonStore
    from prefrl.export import export_run
    from prefrl.loop import train
    from prefrl.run import RunDir

    out.mkdir(parents=True, exist_ok=True)

    # 1. Run A: a synthetic teacher answers. Same as `prefrl train --run-dir A --set ...` on the command line.
    run_a = RunDir(out / "A")
    result_a = train(load_config(None, [*TINY, "seed=0"], base={}), run_a, progress=False)

    # 2. Export: `prefrl export A --format npz` and `prefrl export A --format csv`.
    npz_path, n_exported = export_run(run_a.path, fmt="npz")
    csv_path, _ = export_run(run_a.path, fmt="csv")

    # The npz file is plain arrays: numpy alone reads it, no pickle, no prefrl.
    with np.load(npz_path, allow_pickle=False) as z:
        layout, labels = str(z["format"]), z["label"]
        segment_shape = z["segment_obs"].shape  # (segments, steps, *obs_shape)
    with open(csv_path) as f:
        first_row = next(csv.DictReader(f))

    # 3. Run B: another seed, every label from A's file. Same as
    #    `prefrl train --run-dir B --set oracle.kind=replay --set oracle.replay_file=A/labels.npz --set ...`.
    #    B imports the file into its own labels.sqlite before RL starts and fits its reward to it. A replay
    #    oracle cannot judge B's own new segments, so labels.total stays at most the number of exported labels.
    run_b = RunDir(out / "B")
    replay = ["oracle.kind=replay", f"oracle.replay_file={npz_path}", f"labels.total={n_exported}", "seed=1"]
    result_b = train(load_config(None, [*TINY, *replay], base={}), run_b, progress=False)

    # 4. What B learned from: its label store says where every comparison came from.
    with ComparisonStore(run_b.labels_path) as store:
        comparisons = store.comparisons()
    sources = Counter(c.source for c in comparisons)
    own_questions = sum(c.label == SKIP and c.labeler == "replay" for c in comparisons)

    summary = {
        "exported": n_exported,
        "npz_format": layout,
        "npz_segment_obs_shape": list(segment_shape),
        "npz_labels": len(labels),
        "csv_columns": list(first_row),
        "b_comparisons": len(comparisons),
        "b_sources": dict(sources),
        "b_own_questions": own_questions,
        "a_eval_true_return": result_a.true_return,
        "b_eval_true_return": result_b.true_return,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"run A: {result_a.labels} synthetic labels, eval true return {result_a.true_return:.1f}")
    print(f"exported {n_exported} comparisons to {npz_path.name} ({layout}; segment obs {segment_shape})")
    print(f"  and to {csv_path.name} with columns {', '.join(first_row)}")
    print(f"run B: {len(comparisons)} comparisons, by source {dict(sources)}; {own_questions} questions of its own")
    print(f"  eval true return {result_b.true_return:.1f}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial-replay"), help="where to write")
    main(parser.parse_args().out)
