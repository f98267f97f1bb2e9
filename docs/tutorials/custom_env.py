"""Tutorial: learn a reward for your own gymnasium environment, from a TOML experiment file.

Run it from the repository root (well under a minute on a laptop CPU):

    python docs/tutorials/custom_env.py --out runs/tutorial-custom-env

It defines a small environment, registers it, writes an experiment file that names it, trains an agent on
a reward learned from 40 synthetic comparisons, and reads the run's results back. Everything it makes goes
under ``--out``; ``summary.json`` there holds the numbers it prints.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. The environment: any gymnasium.Env with a Box or Discrete observation and a Box, Discrete,
#    MultiDiscrete or MultiBinary action. prefrl never reads its reward to train the agent: the reward is
#    what the synthetic oracle compares, and what the evaluation reports.


class PointReach(gym.Env):
    """A point in the plane that should move to the origin and stay there.

    Observation: position ``(2,)``. Action: a step ``(2,)`` in [-1, 1], scaled by 0.1.
    Reward: minus the distance to the origin. The episode *terminates* when the point is within 0.1
    of the origin (it reached the goal); the time limit of the registration below *truncates* it.
    """

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)
        return self._pos.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        step = 0.1 * np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self._pos = np.clip(self._pos + step, -2.0, 2.0)
        distance = float(np.linalg.norm(self._pos))
        return self._pos.copy(), -distance, distance < 0.1, False, {}


# 2. Register it. prefrl finds it by id; the ``module:`` prefix in the experiment file below makes
#    ``prefrl train`` import this module first, so the registration also happens in a fresh process.
if "PointReach-v0" not in gym.registry:
    gym.register(id="PointReach-v0", entry_point="custom_env:PointReach", max_episode_steps=50)

# 3. The experiment file names only what differs from the defaults (every key: Reference > Configuration).
#    The budgets here are tiny so that the tutorial runs in seconds; see "what to tune first" in the guide.
EXPERIMENT = """\
name = "point-reach"
task = "move the point to the centre and keep it there"
total_timesteps = 4096
chunk_steps = 1024
eval_episodes = 5

[env]
id = "custom_env:PointReach-v0"
n_envs = 4

[segments]
length = 25

[labels]
total = 40

[reward]
initial_epochs = 20
epochs = 5
min_steps = 20

[agent.kwargs]
n_steps = 64
batch_size = 64
learning_rate = 1e-3
"""


def random_return(episodes: int = 20, seed: int = 0) -> float:
    """Mean true return of a uniformly random policy: the floor a learned policy should rise above."""
    env = gym.make("PointReach-v0")
    env.action_space.seed(seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main(out: Path) -> dict:
    from prefrl.config import load_config
    from prefrl.loop import train
    from prefrl.plots import pearson, plot_run, read_csv_columns
    from prefrl.run import RunDir

    out.mkdir(parents=True, exist_ok=True)
    experiment = out / "point_reach.toml"
    experiment.write_text(EXPERIMENT)

    # 4. Train. The same as `prefrl train point_reach.toml --run-dir RUN --set seed=0` on the command line
    #    (with docs/tutorials on PYTHONPATH, so that `custom_env` can be imported).
    cfg = load_config(experiment, ["seed=0"])
    run = RunDir(out / "run")
    result = train(cfg, run, progress=False)
    plots = plot_run(run.path)

    # 5. Read the results back: the run directory holds everything, as plain files.
    with open(run.metrics_path) as f:
        rows = list(csv.DictReader(f))
    last_fit = [r for r in rows if r.get("reward/val_acc")][-1]
    segments = read_csv_columns(run.path / "segments.csv")  # true vs predicted return of recent segments
    summary = {
        "env": cfg.env.id,
        "timesteps": result.timesteps,
        "labels": result.labels,
        "eval_true_return": result.true_return,
        "random_policy_return": random_return(),
        "reward_val_acc": float(last_fit["reward/val_acc"]),
        "segment_return_correlation": pearson(segments["true_return"], segments["predicted_return"]),
        "plots": [str(p) for p in plots],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['env']}: {summary['labels']} labels, {summary['timesteps']} steps")
    print(f"  true return {summary['eval_true_return']:.1f} (random policy {summary['random_policy_return']:.1f})")
    print(f"  reward model: validation accuracy {summary['reward_val_acc']:.2f}, correlation of predicted")
    print(f"  with true segment returns {summary['segment_return_correlation']:.2f}")
    print(f"  plots: {', '.join(Path(p).name for p in plots)} in {run.plots}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial-custom-env"), help="where to write")
    main(parser.parse_args().out)
