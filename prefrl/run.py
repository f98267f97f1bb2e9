"""A run directory: resolved config, metrics, labels, checkpoints and plots, in one place.

```
RUN/
  config.toml        the resolved config (every knob, after the file and --set overrides)
  metrics.csv        one row per training chunk, namespaced keys (reward/val_acc, labels/total, ...)
  segments.csv       true vs predicted return of recent segments, at the last fit
  labels.sqlite      every comparison and the segments it compares, committed as answered
  checkpoint/        agent.zip, reward.pt, buffer.npz, state.json (written last: the commit marker)
  tb/                TensorBoard events, when tensorboard is installed
  plots/             PNGs
  train.lock         held while a process trains the run; names that process
```
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.config import ConfigError, TrainConfig, loads_config, save_config
from prefrl.io import atomic_write, atomic_write_text


class MetricsLog:
    """CSV always (the header grows when new keys appear); TensorBoard when installed.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from prefrl.run import MetricsLog
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     log = MetricsLog(Path(tmp) / "metrics.csv")
        ...     log.log({"timesteps": 0, "labels/total": 25})
        ...     log.log({"timesteps": 2048, "labels/total": 31, "reward/val_acc": 0.9})  # a new column
        ...     (Path(tmp) / "metrics.csv").read_text().splitlines()
        ['timesteps,labels/total,reward/val_acc', '0,25,', '2048,31,0.9']
    """

    def __init__(self, path: Path, tb_dir: Path | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            with path.open() as f:
                self.rows = list(csv.DictReader(f))
        self.keys: list[str] = list(self.rows[0].keys()) if self.rows else []
        self._tb = None
        if tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(tb_dir))
            except ImportError:
                self._tb = None

    def log(self, metrics: dict[str, Any]) -> None:
        row = {k: v for k, v in metrics.items() if v is not None}
        new = [k for k in row if k not in self.keys]
        self.rows.append(row)
        if new:
            self.keys.extend(new)
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerow(row)
        if self._tb is not None:
            step = int(row.get("timesteps", len(self.rows)))
            for k, v in row.items():
                if isinstance(v, int | float) and math.isfinite(v) and k != "timesteps":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def truncate_after(self, timesteps: int) -> None:
        """Drop rows logged after the checkpoint a resumed run restarts from."""
        self.rows = [r for r in self.rows if int(float(r.get("timesteps", 0) or 0)) <= timesteps]
        self._rewrite()

    def _rewrite(self) -> None:
        with atomic_write(self.path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys)
            w.writeheader()
            w.writerows(self.rows)


class RunDir:
    """A run's directory: ``config.toml``, ``metrics.csv``, ``labels.sqlite``, ``checkpoint/``, ``plots/``.

    Examples:
        >>> import tempfile
        >>> from prefrl.config import load_config
        >>> from prefrl.run import RunDir
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     run = RunDir(tmp)
        ...     run.save_config(load_config(None, ["labels.total=50"]))
        ...     run.load_config().labels.total, run.labels_path.name, run.has_checkpoint()
        (50, 'labels.sqlite', False)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoint").mkdir(exist_ok=True)

    @classmethod
    def peek(cls, path: str | Path) -> RunDir:
        """The run directory at ``path`` to read, without creating it: it may not exist (yet, or here at all)."""
        run = cls.__new__(cls)
        run.path = Path(path)
        return run

    config_path = property(lambda self: self.path / "config.toml")
    labels_path = property(lambda self: self.path / "labels.sqlite")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    ckpt = property(lambda self: self.path / "checkpoint")
    plots = property(lambda self: self.path / "plots")

    def save_config(self, cfg: TrainConfig) -> None:
        save_config(cfg, self.config_path)

    def load_config(self) -> TrainConfig:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.toml); pass the directory of a run")
        return loads_config(self.config_path.read_text())

    def metrics(self) -> MetricsLog:
        tb = self.path / "tb"
        return MetricsLog(self.metrics_path, tb if _has_tensorboard() else None)

    def has_checkpoint(self) -> bool:
        return (self.ckpt / "state.json").exists()

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.ckpt / "state.json", json.dumps(state, indent=1), fsync=True)

    def read_state(self) -> dict[str, Any]:
        return json.loads((self.ckpt / "state.json").read_text())

    def finished(self) -> bool:
        return (self.ckpt / "final.json").exists()

    def write_final(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.ckpt / "final.json", json.dumps(result))

    def read_final(self) -> dict[str, Any]:
        return json.loads((self.ckpt / "final.json").read_text())

    def clear_final(self) -> None:
        """Not finished any more (a run to be lengthened): it resumes from its last checkpoint."""
        (self.ckpt / "final.json").unlink(missing_ok=True)

    def timesteps(self) -> int | None:
        """Agent steps done: the finished run's, else its last checkpoint's; None where neither is readable."""
        for name in ("final.json", "state.json"):
            try:
                return int(json.loads((self.ckpt / name).read_text()).get("timesteps", 0))
            except (OSError, ValueError):
                continue
        return None


_LOCKED: set[Path] = set()  # the run directories this process holds the training lock of


@contextmanager
def training_lock(path: str | Path) -> Iterator[None]:
    """Hold ``path/train.lock`` while this process trains the run in ``path``, and refuse any other process.

    Two processes training one directory (a command started twice, a grid worker left running by a killed
    ``prefrl bench``) would write two agents' checkpoints and labels over each other. The lock is the operating
    system's (``flock``), so it ends with the process however that ends; people labeling in ``prefrl label``
    beside the trainer do not take it, and the process holding it may take it again (a command that trains
    a run's true-reward baseline before the run holds it throughout). Where ``flock`` does not exist (Windows)
    nothing is locked.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from prefrl.run import training_lock
        >>> with tempfile.TemporaryDirectory() as tmp, training_lock(tmp):
        ...     (Path(tmp) / "train.lock").read_text().split()[0]
        'process'
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or key in _LOCKED:
        yield
        return
    with open(path / "train.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(
                f"{path} is in use: {holder} is training it; wait for that to end or stop it, then run the same "
                "command again to resume"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        _LOCKED.add(key)
        try:
            yield
        finally:
            _LOCKED.discard(key)
            f.truncate(0)  # it names no one once free (a killed holder's name stays, with the lock free)
        # closing the file releases the lock


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class Stopwatch:
    def __init__(self, offset: float = 0.0) -> None:
        self.start = time.perf_counter() - offset

    def __call__(self) -> float:
        return time.perf_counter() - self.start
