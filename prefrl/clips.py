"""Rendering queried segments into clips a browser plays, ahead of the person watching.

Rendering every step is out of the question (MuJoCo draws in software here), so the recorder keeps only
what re-creates a frame: the simulator state before each step (:func:`state_fn_for` builds the
``RecordSegments`` hook). A clip is made only for a segment that is actually queried: :class:`ClipRenderer`
sets saved states on a ``render_mode="rgb_array"`` env and renders them; absorbing padding after a
termination is a dark "episode ended" frame. Clips are H.264 in MP4 (``yuv420p``, even size,
``+faststart``), which Chromium, Firefox and Safari play.

What a clip costs, and what is cut (numbers in ``benchmarks/results/labeling.md``):

- Frames: a clip plays in real time (``render_fps`` of the env, 1/dt for MuJoCo) but shows at most
  ``max_fps`` frames a second, so it draws every ``stride``-th step: a 1.5 s Hopper segment is 188 steps
  at 125 steps/s, drawn as 38 frames at 25 frames/s.
- MuJoCo scene: shadows (a 4096² shadow map drawn every frame), reflections, skybox, haze and 4x
  multisampling cost most of a software frame and tell a labeler nothing; they are off unless
  ``effects=True``.
- Size: MuJoCo, Pendulum and Acrobot draw at the clip's size rather than drawing large and scaling down.

:class:`ClipCache` renders in worker processes (each with its own GL context) and keeps the files, so the
labeler can have the next questions' clips made as soon as they are queued.

Supported: classic control (CartPole, Pendulum, Acrobot, MountainCar: ``env.unwrapped.state``),
MuJoCo (``qpos``/``qvel``) and Atari (the emulator state, see :class:`_AtariState`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from prefrl.config import ConfigError
from prefrl.data import Segment
from prefrl.io import atomic_write

CLASSIC = ("CartPole", "Pendulum", "Acrobot", "MountainCar")
"""Classic-control families whose ``unwrapped.state`` is the whole simulator state."""
SQUARE_SCREEN = {"Pendulum": "screen_dim", "Acrobot": "SCREEN_DIM"}
"""Classic-control envs that draw everything in proportion to a square screen of this attribute's size."""
MAX_FPS = 30
"""Clips show at most this many frames per second (people need ~25-30); more steps than that are skipped."""


class ClipError(ConfigError):
    """A segment cannot be rendered (an environment without saved state, a segment recorded without it)."""


def _resolve(env_id: str) -> str:
    """:func:`prefrl.make.resolve_env_id`, skipped for ids gymnasium knows already: a render worker then does not
    import the training stack (torch), which takes seconds."""
    if env_id in gym.registry and not env_id.startswith("ALE/"):
        return env_id
    from prefrl.make import resolve_env_id

    return resolve_env_id(env_id)


def _family(env_id: str) -> str:
    """``classic``, ``mujoco``, ``atari`` or ``unsupported`` for a gymnasium id (a ``module:`` prefix is imported)."""
    env_id = _resolve(env_id)
    if env_id.startswith("ALE/"):  # prefrl.make.is_atari, of a resolved id
        return "atari"
    entry = str(gym.registry[env_id].entry_point)
    if "mujoco" in entry:
        return "mujoco"
    if "classic_control" in entry and any(name in env_id for name in CLASSIC):
        return "classic"
    return "unsupported"


def state_fn_for(env_id: str) -> Callable[[Any], np.ndarray]:
    """The ``RecordSegments`` hook for ``env_id``: ``venv -> (n_envs, S)`` simulator state before the step.

    Raises :class:`ClipError` for environments whose clips cannot be re-created yet.
    """
    family = _family(env_id)
    if family == "classic":
        return _ClassicState()
    if family == "mujoco":
        return _mujoco_state
    if family == "atari":
        return _AtariState()
    raise ClipError(
        f"{env_id}: clips for people need a saved simulator state; supported are classic control "
        f"({', '.join(CLASSIC)}), MuJoCo and Atari. Use a synthetic oracle for this environment"
    )


class _ClassicState:
    """``unwrapped.state`` of each env; direct attribute access when the envs live in this process."""

    def __init__(self) -> None:
        self._envs: list[Any] | None = None

    def __call__(self, venv: Any) -> np.ndarray:
        if self._envs is None:
            inner = venv.unwrapped
            self._envs = [e.unwrapped for e in inner.envs] if hasattr(inner, "envs") else []
        if self._envs:
            return np.stack([np.asarray(e.state, dtype=np.float64) for e in self._envs])  # (n_envs, S)
        return np.stack([np.asarray(s, dtype=np.float64) for s in venv.get_attr("state")])


def _mujoco_state(venv: Any) -> np.ndarray:
    return np.stack(venv.env_method("state_vector"))  # (n_envs, nq + nv) qpos then qvel


class _AtariState:
    """Each game's emulator state before the step (``ale.cloneState().serialize()``, ~7.7 kB) as a row of bytes:
    its length (4 bytes, little-endian), the state, zeros up to a fixed width.

    Why a state per step rather than reset seeds and actions: replaying from an episode's start costs up to
    thousands of steps per clip (a Pong game is ~1000-4000), and the no-op starts and life-loss "resets" of the
    Atari wrappers make that bookkeeping fragile; cloning costs ~60 µs per env step (under 2% of an A2C step)
    and the state is ~1/4 of the size of the step's stacked frames. The emulator does not keep its screen in the
    state, so a frame is re-created by restoring the state and taking the step's action (:class:`ClipRenderer`).
    """

    HEADER = 4

    def __init__(self) -> None:
        self._envs: list[Any] | None = None
        self.width = 0

    def __call__(self, venv: Any) -> np.ndarray:
        if self._envs is None:
            inner = venv.unwrapped
            self._envs = [e.unwrapped for e in inner.envs] if hasattr(inner, "envs") else []
        if self._envs:
            blobs = [e.ale.cloneState().serialize() for e in self._envs]
        else:
            blobs = [state.serialize() for state in venv.env_method("clone_state")]
        if not self.width:  # the state's size is fixed per game; a little room in case it is not
            self.width = -(-(max(map(len, blobs)) + self.HEADER + 64) // 256) * 256
        out = np.zeros((len(blobs), self.width), dtype=np.uint8)  # (n_envs, width)
        for i, blob in enumerate(blobs):
            n = len(blob)
            if n + self.HEADER > self.width:
                raise ClipError(f"an ALE state of {n} bytes does not fit the {self.width}-byte rows of this run")
            out[i, : self.HEADER] = np.frombuffer(n.to_bytes(self.HEADER, "little"), dtype=np.uint8)
            out[i, self.HEADER : self.HEADER + n] = np.frombuffer(blob, dtype=np.uint8)
        return out

    @classmethod
    def decode(cls, row: np.ndarray) -> Any:
        """The ``ale_py.ALEState`` of one row."""
        import ale_py

        row = np.asarray(row, dtype=np.uint8)
        n = int.from_bytes(row[: cls.HEADER].tobytes(), "little")
        return ale_py.ALEState(row[cls.HEADER : cls.HEADER + n].tobytes())


def _set_state(env: gym.Env, family: str, state: np.ndarray) -> None:
    u = env.unwrapped
    if family == "classic":
        u.state = np.array(state, dtype=np.float64)
    else:
        nq = u.model.nq
        u.set_state(state[:nq], state[nq:])


def _even(n: int) -> int:
    return max(2, n - n % 2)


def _mujoco_viewer(env: gym.Env, *, effects: bool) -> Any:
    """Make the env's off-screen viewer (its GL context); without ``effects``, turn off what a software
    renderer pays most for and a labeler does not need."""
    import mujoco

    u = env.unwrapped
    if not effects:
        u.model.vis.quality.offsamples = 0  # no multisampling; read when the first render makes the GL context
    env.render()
    viewer = u.mujoco_renderer.viewer
    if not effects:
        for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX", "mjRND_HAZE"):
            viewer.scn.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
    return viewer


class ClipRenderer:
    """Renders segments of one environment to MP4 files (not thread-safe: one per worker).

    Args:
        env_id: gymnasium id the segments came from.
        env_kwargs: passed to ``gymnasium.make`` (the same as for training).
        max_fps: most frames per second shown; clips play in real time (the env's ``render_fps``) and
            draw every ``stride``-th step to stay under it. 0 draws every step.
        size: the longer side of the clip in pixels (rounded down to even).
        effects: MuJoCo only: keep the model's shadows, reflections, skybox, haze and multisampling
            (several times slower in software).
    """

    def __init__(
        self,
        env_id: str,
        *,
        env_kwargs: dict[str, Any] | None = None,
        max_fps: int = MAX_FPS,
        size: int = 256,
        effects: bool = False,
    ) -> None:
        self.family = _family(env_id)
        if self.family == "unsupported":
            state_fn_for(env_id)  # raises the explanatory ClipError
        if self.family == "mujoco":
            os.environ.setdefault("MUJOCO_GL", "egl")  # the software renderer that works headless
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (classic control) draws off-screen
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        kwargs = dict(env_kwargs or {})
        if self.family == "mujoco":  # draw at the clip's size: software rendering costs per pixel
            kwargs.setdefault("width", _even(int(size)))
            kwargs.setdefault("height", _even(int(size)))
        if self.family == "atari":  # the training envs' preprocessing: replayed steps go through it
            from prefrl.make import make_atari

            self.env = make_atari(env_id, kwargs)
            self._skip = _wrapper(self.env, "MaxAndSkipEnv")
        else:
            self.env = gym.make(_resolve(env_id), render_mode="rgb_array", **kwargs)
        self.env.reset(seed=0)
        u = self.env.unwrapped
        for name, attr in SQUARE_SCREEN.items():
            if self.family == "classic" and name in env_id:
                setattr(u, attr, _even(int(size)))
        self._viewer = _mujoco_viewer(self.env, effects=effects) if self.family == "mujoco" else None
        rate = Fraction(self.env.metadata.get("render_fps") or 30).limit_denominator(1000)  # steps per second
        if self.family == "atari":  # the console draws 60 frames a second (ALE's metadata says 30); a step is a few
            rate = Fraction(60, self._skip._skip)
        self.stride = max(1, math.ceil(rate / max_fps)) if max_fps > 0 else 1
        self.fps = rate / self.stride
        self.size = int(size)

    def close(self) -> None:
        if self._viewer is not None:  # GL objects are deleted in the current context: make it ours, not another's
            self._viewer.make_context_current()
            self._viewer.con.free()
        self.env.close()

    def frame_steps(self, segment: Segment) -> range:
        """The steps of ``segment`` a clip shows, one frame each: every ``stride``-th, from the first."""
        return range(0, segment.T, self.stride)

    def frames(self, segment: Segment) -> np.ndarray:
        """``(F, H, W, 3)`` uint8, a frame per step of :meth:`frame_steps`: real steps re-created from their
        saved states, padding after a termination as the "episode ended" frame."""
        if segment.states is None:
            raise ClipError(f"segment {segment.id}: no simulator states were saved, so it cannot be rendered")
        if self._viewer is not None:  # another renderer in this thread may have made its own context current
            self._viewer.make_context_current()
        real = []
        for t in self.frame_steps(segment):
            if t >= segment.length:
                break
            real.append(self._scaled(self._render_step(segment, t)))
        pad = _ended_frame(real[-1].shape)
        return np.stack(real + [pad] * (len(self.frame_steps(segment)) - len(real)))

    def replay_observations(self, segment: Segment) -> np.ndarray:
        """``(length - 1, *obs_shape)`` observations after stepping each saved state with its recorded action.

        Equal to ``segment.obs[1:length]`` exactly when the states are the ones the segment was recorded from.
        """
        if self.family == "atari":
            return self._atari_replay(segment)
        u = self.env.unwrapped
        out = []
        for t in range(segment.length - 1):
            _set_state(self.env, self.family, segment.states[t])
            action = segment.actions[t]
            if isinstance(self.env.action_space, gym.spaces.Discrete):
                action = int(action)
            obs, *_ = u.step(action)
            out.append(np.asarray(obs, dtype=segment.obs.dtype))
        return np.stack(out) if out else segment.obs[:0]

    def _render_step(self, segment: Segment, t: int) -> np.ndarray:
        """The screen of step ``t``, from its saved state (Atari: the screen the step's action led to)."""
        if self.family == "atari":
            return self._atari_step(segment, t)[1]
        _set_state(self.env, self.family, segment.states[t])
        return self.env.render()

    def _atari_step(self, segment: Segment, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Restore the emulator state before step ``t`` and take its action through the Atari wrappers.

        Returns the agent's new frame ``(84, 84)`` and the RGB screen ``(210, 160, 3)`` it was made from: the
        maximum of the step's last two frames, as the wrappers pool them, so flickering sprites show.
        """
        self.env.unwrapped.ale.restoreState(_AtariState.decode(segment.states[t]))
        obs, *_ = self.env.step(int(segment.actions[t]))  # (84, 84, 1)
        return obs[..., -1], self._skip._obs_buffer.max(axis=0)

    def _atari_replay(self, segment: Segment) -> np.ndarray:
        """Stacked observations ``(length - 1, n_stack, 84, 84)``: each step's replayed frame pushed onto the stack,
        starting from the segment's first observation (frames from before its first saved state)."""
        stack = segment.obs[0]  # (n_stack, 84, 84), newest last
        out = []
        for t in range(segment.length - 1):
            frame, _ = self._atari_step(segment, t)
            stack = np.concatenate([stack[1:], frame[None]])
            out.append(stack)
        return np.stack(out) if out else segment.obs[:0]

    def _scaled(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        scale = self.size / max(h, w)
        size = (_even(round(w * scale)), _even(round(h * scale)))
        if size == (w, h):
            return np.ascontiguousarray(frame[..., :3])
        return cv2.resize(np.ascontiguousarray(frame[..., :3]), size, interpolation=cv2.INTER_AREA)

    def write(self, segment: Segment, path: Path) -> Path:
        """Render ``segment`` into an MP4 at ``path`` (written beside it, then renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.mp4"  # one per writer, hidden from the cache
        with atomic_write(path, name=part) as tmp:
            encode_mp4(self.frames(segment), tmp, fps=self.fps)
        return path


def _wrapper(env: gym.Env, name: str) -> gym.Env:
    """The wrapper of class ``name`` in ``env``'s chain."""
    while type(env).__name__ != name:
        if not isinstance(env, gym.Wrapper):
            raise ClipError(f"the render env has no {name} wrapper")
        env = env.env
    return env


def _ended_frame(shape: tuple[int, ...]) -> np.ndarray:
    """Dark grey with "episode ended" in the middle: the absorbing state after a termination."""
    import cv2

    h, w = shape[:2]
    frame = np.full((h, w, 3), 40, dtype=np.uint8)
    text, font, scale = "episode ended", cv2.FONT_HERSHEY_SIMPLEX, max(0.4, w / 400)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(frame, text, ((w - tw) // 2, (h + th) // 2), font, scale, (200, 200, 200), 1, cv2.LINE_AA)
    return frame


def encode_mp4(frames: np.ndarray, path: Path, *, fps: int | Fraction, crf: int = 23) -> None:
    """``frames (T, H, W, 3)`` uint8 (H, W even) → H.264 ``yuv420p`` MP4 with the index up front."""
    import av

    T, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {w}x{h}")
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        stream.codec_context.thread_count = 1
        for t in range(T):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frames[t], format="rgb24")))
        out.mux(stream.encode())


def default_workers() -> int:
    """Render processes for this machine: one per core it may use, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


class ClipCache:
    """Clip files in ``directory`` (``<segment id>.mp4``), rendered by worker processes, most urgent first.

    Each worker process keeps a :class:`ClipRenderer` (and so a GL context) per environment. A clip someone
    waits for (:meth:`get`, or ``prefetch(urgent=True)``) goes before clips asked for ahead of time
    (:meth:`prefetch`), each in the order asked.
    Segments are loaded here with ``load`` and handed to the workers.

    Args:
        directory: where clips are kept.
        load: ``segment id -> Segment`` (e.g. from the label store).
        env_kwargs: passed to ``gymnasium.make`` for the render envs.
        max_fps, size, effects: see :class:`ClipRenderer`.
        workers: render processes (0: :func:`default_workers`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        load: Callable[[int], Segment],
        env_kwargs: dict[str, Any] | None = None,
        max_fps: int = MAX_FPS,
        size: int = 256,
        effects: bool = False,
        workers: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.workers = int(workers) or default_workers()
        self._load = load
        self._renderer_args = {"env_kwargs": env_kwargs, "max_fps": max_fps, "size": size, "effects": effects}
        self._lock = threading.Condition()
        self._jobs: dict[int, Future[Path]] = {}
        self._todo: list[tuple[int, int, int]] = []  # heap of (0 waited for | 1 ahead, order asked, segment id)
        self._order = itertools.count()
        self._closed = False
        self._pool = self._start_pool()
        for i in range(self.workers):  # one feeder per process: keeps the order here, not in the pool's queue
            threading.Thread(target=self._feed, name=f"clip-feed-{i}", daemon=True).start()

    def path(self, segment_id: int) -> Path:
        return self.directory / f"{int(segment_id)}.mp4"

    def prefetch(self, segment_ids: Iterable[int], *, urgent: bool = False) -> None:
        """Start rendering these clips in the background (those not on disk or under way), in this order;
        ``urgent`` ones before any that are not (someone is about to watch them)."""
        for sid in segment_ids:
            self._submit(int(sid), urgent=urgent)

    def get(self, segment_id: int, timeout: float | None = 60.0) -> Path:
        """The clip's file, rendering it first (ahead of any prefetched clip) if needed; waits up to ``timeout`` s."""
        return self._submit(int(segment_id), urgent=True).result(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancel()  # only those not started
            self._lock.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, sid: int, *, urgent: bool) -> Future[Path]:
        with self._lock:
            job = self._jobs.get(sid)
            if job is not None and not (job.done() and (job.cancelled() or job.exception() is not None)):
                if urgent and not job.running() and not job.done():
                    heapq.heappush(self._todo, (0, next(self._order), sid))  # moves ahead; the old entry is skipped
                    self._lock.notify()
                return job
            job = self._jobs[sid] = Future()
            if self.path(sid).exists():
                job.set_result(self.path(sid))
            else:
                heapq.heappush(self._todo, (0 if urgent else 1, next(self._order), sid))
                self._lock.notify()
            return job

    def _feed(self) -> None:
        while True:
            with self._lock:
                while not self._todo and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                sid = heapq.heappop(self._todo)[2]
                job = self._jobs[sid]
                if job.running() or job.done() or not job.set_running_or_notify_cancel():
                    continue  # an entry left behind when the clip moved ahead, or a cancelled one
            try:
                job.set_result(self._render(sid))
            except BaseException as e:  # the job carries it to whoever waits for the clip
                job.set_exception(e)

    def _render(self, sid: int) -> Path:
        segment = self._load(sid)
        pool = self._pool
        try:
            return pool.submit(_write_clip, segment, self.path(sid)).result()
        except BrokenProcessPool:  # a worker died (killed, or crashed in the GL driver): new workers, one retry
            with self._lock:
                if self._pool is pool and not self._closed:
                    self._pool = self._start_pool()
                pool = self._pool
            return pool.submit(_write_clip, segment, self.path(sid)).result()

    def _start_pool(self) -> ProcessPoolExecutor:
        os.environ.setdefault("MUJOCO_GL", "egl")  # inherited by the workers before they import mujoco
        gl_threads = max(1, default_workers() // self.workers)  # llvmpipe threads per worker: no oversubscription
        # Workers fork from a clean server process that imported this module (and what it needs) once: not from
        # this process, which holds threads and maybe GL state, and not a fresh interpreter each (seconds apiece).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["prefrl.clips", "av", "cv2"])
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_worker_start, initargs=(self._renderer_args, gl_threads)
        )


# -- inside a render worker process -----------------------------------------------------------------

_renderers: dict[str, ClipRenderer] = {}
"""This worker's renderers, one per environment (each holds a GL context)."""
_worker_args: dict[str, Any] = {}


def _worker_start(renderer_args: dict[str, Any], gl_threads: int) -> None:
    os.environ.setdefault("LP_NUM_THREADS", str(gl_threads))
    _worker_args.update(renderer_args)
    parent = multiprocessing.parent_process()
    if parent is not None:  # a server killed with -9 takes its workers with it
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _write_clip(segment: Segment, path: Path) -> Path:
    renderer = _renderers.get(segment.env_id)
    if renderer is None:
        renderer = _renderers[segment.env_id] = ClipRenderer(segment.env_id, **_worker_args)
    return renderer.write(segment, path)
