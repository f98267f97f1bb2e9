"""Running a grid: each unfinished cell is :func:`run_job`, in a local process pool or as a Ray task; SIGTERM
stops a grid as Ctrl-C does, and workers never outlive the process that started them."""

from __future__ import annotations

import csv
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefrl.bench.grid import Grid, Job
from prefrl.bench.records import is_finished, read_final_result, read_record, timesteps_done, write_records
from prefrl.bench.report import collect_rows, write_results
from prefrl.config import ConfigError
from prefrl.run import RunDir


def _lengthen(job: Job) -> None:
    """A finished (or part-way) run that the grid now wants longer: its config says the new length, and it is no
    longer finished; :func:`prefrl.loop.train` resumes it from its last checkpoint."""
    run = job.run
    if run.config_path.exists() and run.load_config().total_timesteps < job.config.total_timesteps:
        run.save_config(job.config)
        run.clear_final()


def run_job(job: Job) -> dict[str, Any]:
    """Train one cell of the grid (or resume it, or return its result if it is finished). Runs in a pool
    worker or a Ray task; each gets one CPU thread, so ``workers`` runs share ``workers`` cores."""
    import torch

    from prefrl.loop import train

    torch.set_num_threads(1)
    _lengthen(job)
    result = train(job.config, RunDir(job.run_dir), progress=False)
    return {"name": job.name, "timesteps": result.timesteps, "true_return": result.true_return}


@dataclass
class Report:
    planned: int
    finished: int
    failed: dict[str, str]
    ran: list[str]
    """Names of the runs trained (or resumed) by this call; finished ones are skipped."""
    written: list[Path]


def run_grid(
    grid: Grid,
    *,
    workers: int = 2,
    ray_address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run every unfinished cell of ``grid`` (local pool of ``workers`` processes, or Ray at ``ray_address``:
    ``auto``, ``HOST:PORT``, or ``local`` to start a Ray instance on this machine), then write the results."""
    say = log or (lambda msg: print(f"prefrl: {msg}", file=sys.stderr, flush=True))
    if workers < 1:
        raise ConfigError("--workers must be ≥ 1")
    todo = [j for j in grid.jobs if not is_finished(j)]
    resumed = sum(j.run.has_checkpoint() for j in todo)
    where = f"Ray at {ray_address}" if ray_address else f"a local pool of {min(workers, max(1, len(todo)))} workers"
    say(
        f"grid {grid.name}: {len(grid.jobs)} runs, {len(grid.jobs) - len(todo)} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start" + (f", on {where}" if todo else "")
    )
    failed: dict[str, str] = {}
    view = _Progress(grid.jobs, enabled=progress)
    last_write = time.monotonic()

    def done(job: Job, error: BaseException | None) -> None:
        if error is None:
            view.write(f"{job.name}: true return {read_final_result(job)['true_return']:.1f}")
            write_records(grid, collect_rows(grid))  # at once: the record is what outlives the run directory
        else:
            failed[job.name] = f"{type(error).__name__}: {error}"
            view.write(f"{job.name}: FAILED ({failed[job.name]})")
        nonlocal last_write
        if time.monotonic() - last_write > 60:  # results so far, while the rest runs
            write_results(grid)
            last_write = time.monotonic()

    try:
        with _sigterm_interrupts():
            if todo and ray_address:
                _run_ray(todo, address=ray_address, workers=workers, on_done=done, poll=view.refresh)
            elif todo:
                _run_pool(todo, workers=workers, on_done=done, poll=view.refresh)
    finally:
        view.close()
        written = write_results(grid)  # also when interrupted: the results so far
    finished = sum(is_finished(j) for j in grid.jobs)
    return Report(len(grid.jobs), finished, failed, [j.name for j in todo], written)


def _run_pool(todo: list[Job], *, workers: int, on_done, poll) -> None:
    """The jobs in a pool of ``workers`` processes. Interrupted (Ctrl-C, or ``kill``: see :func:`_sigterm_interrupts`),
    it stops its workers at once, each run keeping its last checkpoint; killed outright, its workers notice and
    end themselves (:func:`_init_worker`) rather than train on unwatched."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    before = set(mp.active_children())
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    pending = {pool.submit(run_job, job): job for job in todo}
    try:
        while pending:
            ready, _ = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in ready:
                on_done(pending.pop(fut), fut.exception())
            poll()
    except BaseException as e:
        for fut in pending:
            fut.cancel()
        if isinstance(e, _Terminated):  # Ctrl-C reaches the workers itself; a `kill` of this process does not
            workers_left = set(mp.active_children()) - before
            for child in workers_left:
                child.terminate()  # each unwinds as from Ctrl-C (see _init_worker), keeping its checkpoint
            pool.shutdown(wait=False, cancel_futures=True)
            for child in workers_left:
                child.join(timeout=30)
                if child.is_alive():
                    child.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def _init_worker(parent: int) -> None:
    """Pool worker initializer: SIGTERM stops this worker's run as Ctrl-C would (also where a shell started the
    grid in the background, ignoring Ctrl-C's signal), and the worker ends once the process that started it is
    gone (killed with no chance to stop it). Its run resumes from its last checkpoint next time, and its lock is
    free for that."""
    signal.signal(signal.SIGTERM, _raise_terminated)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, name="prefrl-exit-with-parent", daemon=True).start()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, to stop the grid (or a worker's run) as Ctrl-C does."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """``kill`` (SIGTERM) stops a grid as Ctrl-C does: workers stopped, results so far written. Only the main
    thread can set a signal handler; elsewhere SIGTERM keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _probe(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` where nothing listens (Ray itself retries a dead address for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the head node with "
            "`ray start --head` and pass the address it prints"
        ) from None


def _run_ray(todo: list[Job], *, address: str, workers: int, on_done, poll) -> None:
    """The same :func:`run_job` as Ray tasks of one CPU each; at most ``workers`` in flight at once."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray-address needs Ray: pip install 'prefrl[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="warning")
        else:
            _probe(address)
            try:
                ray.init(address=address, logging_level="warning")
            except ConnectionError as e:
                raise ConfigError(
                    f"--ray-address {address}: no Ray cluster there ({e}); start one with `ray start`"
                ) from None
    task = ray.remote(num_cpus=1, max_retries=0)(run_job)
    queue, pending = list(todo), {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[task.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    ray.get(ref)
                    on_done(job, None)
                except ray.exceptions.RayTaskError as e:
                    on_done(job, e.as_instanceof_cause())
                except ray.exceptions.RayError as e:  # a worker or node lost
                    on_done(job, e)
            poll()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


class _Progress:
    """One bar over the steps of the whole grid, read from the runs' checkpoints; a line per finished run."""

    def __init__(self, jobs: list[Job], *, enabled: bool) -> None:
        from tqdm import tqdm

        self.jobs = jobs
        total = sum(j.config.total_timesteps for j in jobs)
        self.bar = tqdm(total=total, unit="step", unit_scale=True, desc="grid", disable=not enabled, smoothing=0.05)
        self.refresh()

    def refresh(self) -> None:
        steps = [timesteps_done(j) for j in self.jobs]
        finished = sum(is_finished(j) for j in self.jobs)
        started = sum(s > 0 for s in steps) - finished
        self.bar.update(min(sum(steps), self.bar.total) - self.bar.n)
        self.bar.set_postfix_str(f"{finished}/{len(self.jobs)} runs finished, {started} part-way")

    def write(self, msg: str) -> None:
        self.bar.write(f"prefrl: {msg}", file=sys.stderr)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def status(grid: Grid) -> list[dict[str, Any]]:
    """Where every run of the grid stands: ``finished``, ``part-way`` (with its steps) or ``not started``; with
    ``wall_s``, its training time so far (NaN where unknown), and for a part-way run ``eta_s``, the time its
    remaining steps take at its rate since its first logged row (past setup such as the reward fit before RL)."""
    out = []
    for j in grid.jobs:
        t = timesteps_done(j)
        state = "finished" if is_finished(j) else "part-way" if t > 0 else "not started"
        wall = _wall_s(j) if t > 0 else 0.0
        total = j.config.total_timesteps
        if state == "part-way":  # t > 0; a run past its steps but not yet evaluated has none left
            eta = _seconds_per_step(j, default=wall / t) * max(total - t, 0)
        else:
            eta = 0.0 if state == "finished" else math.nan
        out.append({"run": j.name, "state": state, "timesteps": t, "total": total, "wall_s": wall, "eta_s": eta})
    return out


def _wall_s(job: Job) -> float:
    """Training time so far: the run's last checkpoint's, or for a finished run known only by its record, its
    last row's; NaN where neither says."""
    try:
        return float(job.run.read_state()["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return float(read_record(job)["rows"][-1]["wall_s"])
    except (OSError, ConfigError, KeyError, IndexError, TypeError, ValueError):
        return math.nan


def _seconds_per_step(job: Job, *, default: float) -> float:
    """Wall seconds per agent step between the first and last rows of the run's ``metrics.csv`` (``default`` if
    they are not two distinct points)."""
    try:
        with open(job.run.metrics_path, newline="") as f:
            points = [(float(r["timesteps"]), float(r["wall_s"])) for r in csv.DictReader(f) if r.get("wall_s")]
    except (OSError, KeyError, ValueError):
        return default
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return default
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
