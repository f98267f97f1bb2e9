"""Reward-model speed: seconds per training epoch and microseconds per ``step_rewards`` call.

Writes ``benchmarks/results/reward_fit.md``. Usage: ``python benchmarks/reward_fit.py [--epochs 7] [--no-cnn]``.
Goals: <= 2 s per epoch (3 members, 1,000 comparisons of 50-step segments); step_rewards <= 150 us for N=8.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from prefrl.bench import machine_info
from prefrl.data import Comparison, Segment
from prefrl.reward import RewardEnsemble, RewardTrainer

RESULTS = Path(__file__).parent / "results" / "reward_fit.md"


def synthetic(rng, obs_space, act_space, *, n_segments, n_comparisons, T):
    """Random segments of a hidden reward (brightness for images, a random linear function otherwise)."""
    segs = []
    w = rng.normal(size=int(np.prod(obs_space.shape)))
    for i in range(n_segments):
        if obs_space.dtype == np.uint8:
            obs = rng.integers(0, 256, size=(T, *obs_space.shape), dtype=np.uint8)
            r = obs.reshape(T, -1).mean(1) / 255
        else:
            obs = rng.normal(size=(T, *obs_space.shape)).astype(np.float32)
            r = obs.reshape(T, -1) @ w
        act = np.stack([act_space.sample() for _ in range(T)])
        segs.append(Segment(i, obs, act, r.astype(np.float32), T, False, "bench"))
    comps = []
    for _ in range(n_comparisons):
        a, b = rng.choice(n_segments, size=2, replace=False)
        comps.append(Comparison((a, b), int(segs[b].true_return > segs[a].true_return), query_id=rng.bytes(8).hex()))
    return comps, {s.id: s for s in segs}


def time_fit(ens, comps, segs, epochs):
    trainer = RewardTrainer(ens, seed=0)
    trainer.fit(comps, segs, epochs=1)  # warm-up
    runs = [trainer.fit(comps, segs, epochs=1) for _ in range(epochs)]
    return statistics.median(m["reward/epoch_s"] for m in runs), statistics.median(m["reward/fit_s"] for m in runs)


def time_step_rewards(ens, obs, act, *, fast, calls=2000):
    for _ in range(100):
        ens.step_rewards(obs, act, fast=fast)
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            ens.step_rewards(obs, act, fast=fast)
        samples.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=7, help="timed epochs per setting (median reported)")
    p.add_argument("--no-cnn", action="store_true", help="skip the Atari-sized CNN rows")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    box = lambda *shape: gym.spaces.Box(-1.0, 1.0, shape, np.float32)  # noqa: E731
    settings = [
        ("Pendulum-sized MLP", box(3), box(1), 1000, 50, 600),
        ("Hopper-sized MLP", box(11), box(3), 1000, 50, 600),
    ]
    if not args.no_cnn:
        frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        settings.append(("Atari-sized CNN, 4x84x84", frames, gym.spaces.Discrete(6), 100, 25, 60))
    rows = []
    for name, obs_space, act_space, n_comp, T, n_seg in settings:
        obs_space.seed(0), act_space.seed(0)
        comps, segs = synthetic(rng, obs_space, act_space, n_segments=n_seg, n_comparisons=n_comp, T=T)
        ens = RewardEnsemble(obs_space, act_space, members=3, seed=0)
        epoch_s, fit_s = time_fit(ens, comps, segs, args.epochs if ens.model == "mlp" else 3)
        obs8 = np.stack([obs_space.sample() for _ in range(8)])
        act8 = np.stack([act_space.sample() for _ in range(8)])
        fast = time_step_rewards(ens, obs8, act8, fast=True, calls=2000 if ens.model == "mlp" else 20)
        slow = time_step_rewards(ens, obs8, act8, fast=False, calls=2000 if ens.model == "mlp" else 20)
        row = (name, f"{n_comp} x {T} steps", f"{epoch_s:.3f}", f"{fit_s:.3f}")
        rows.append((*row, f"{fast:.0f}" if ens.model == "mlp" else "-", f"{slow:.0f}"))
        print(" | ".join(rows[-1]), flush=True)

    info = machine_info()
    lines = [
        "# Reward model fit and inference speed",
        "",
        "`python benchmarks/reward_fit.py` — 3 members, batch 64, pairs labelled by a hidden reward, 1/e held out.",
        "Epoch = one pass over every member's bootstrap of the train split + train/val evaluation (median of "
        f"{args.epochs} one-epoch fits; the CNN row: 3). fit(epochs=1) adds building the feature bank.",
        "step_rewards: one call on N=8 steps, normalized `(K, N)` output; numpy path (MLP) and torch path.",
        "",
        "| setting | comparisons | s / epoch | s / fit(epochs=1) | step_rewards N=8, numpy (us) | torch (us) |",
        "| --- | --- | --- | --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Goals: <= 2 s per epoch for the MLP rows; step_rewards <= 150 us (Pendulum-sized, N=8).",
        "",
        "Machine: " + ", ".join(f"{k}: {v}" for k, v in info.items()),
        "(2 shared cores: other processes may have been running; numbers are medians.)",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
