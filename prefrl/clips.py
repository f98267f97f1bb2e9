"""Rendering queried segments into clips a browser plays, lazily and ahead of the person watching.

Rendering every step is out of the question (MuJoCo renders ~20 frames/s in software), so the
recorder keeps only what re-creates a frame: the simulator state before each step
(:func:`state_fn_for` builds the ``RecordSegments`` hook). A clip is made only for a segment that is
actually queried: :class:`ClipRenderer` sets each saved state on a ``render_mode="rgb_array"`` env and
renders it; absorbing padding after a termination is a dark "episode ended" frame. Clips are H.264
in MP4 (``yuv420p``, even size, ``+faststart``), which Chromium, Firefox and Safari play.
:class:`ClipCache` renders in a pool of worker threads and keeps the files, so the labeler can ask
for the next queries' clips before the person gets there.

Supported: classic control (CartPole, Pendulum, Acrobot, MountainCar: ``env.unwrapped.state``) and
MuJoCo (``qpos``/``qvel``). Atari (ALE state) is not supported yet.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from prefrl.config import ConfigError
from prefrl.data import Segment

CLASSIC = ("CartPole", "Pendulum", "Acrobot", "MountainCar")
"""Classic-control families whose ``unwrapped.state`` is the whole simulator state."""


class ClipError(ConfigError):
    """A segment cannot be rendered (an environment without saved state, a segment recorded without it)."""


def _family(env_id: str) -> str:
    """``classic``, ``mujoco`` or ``unsupported`` for a gymnasium id (a ``module:`` prefix is imported)."""
    from prefrl.make import is_atari, resolve_env_id

    env_id = resolve_env_id(env_id)
    if is_atari(env_id):
        return "unsupported"
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
    raise ClipError(
        f"{env_id}: clips for people need a saved simulator state; supported are classic control "
        f"({', '.join(CLASSIC)}) and MuJoCo. Use a synthetic oracle for this environment"
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


def _set_state(env: gym.Env, family: str, state: np.ndarray) -> None:
    u = env.unwrapped
    if family == "classic":
        u.state = np.array(state, dtype=np.float64)
    else:
        nq = u.model.nq
        u.set_state(state[:nq], state[nq:])


def _even(n: int) -> int:
    return max(2, n - n % 2)


class ClipRenderer:
    """Renders segments of one environment to MP4 files (not thread-safe: one per worker thread).

    Args:
        env_id: gymnasium id the segments came from.
        env_kwargs: passed to ``gymnasium.make`` (the same as for training).
        fps: playback frames per second; 0 takes the env's ``render_fps`` (30 if it has none).
        size: the longer side of the clip in pixels (rounded down to even).
    """

    def __init__(self, env_id: str, *, env_kwargs: dict[str, Any] | None = None, fps: int = 0, size: int = 256) -> None:
        from prefrl.make import resolve_env_id

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
        self.env = gym.make(resolve_env_id(env_id), render_mode="rgb_array", **kwargs)
        self.env.reset(seed=0)
        self.fps = int(fps or self.env.metadata.get("render_fps") or 30)
        self.size = int(size)

    def close(self) -> None:
        self.env.close()

    def frames(self, segment: Segment) -> np.ndarray:
        """``(T, H, W, 3)`` uint8: the segment's real steps re-created from its states, then padding frames."""
        if segment.states is None:
            raise ClipError(f"segment {segment.id}: no simulator states were saved, so it cannot be rendered")
        real = []
        for t in range(segment.length):
            _set_state(self.env, self.family, segment.states[t])
            real.append(self._scaled(self.env.render()))
        pad = _ended_frame(real[-1].shape) if segment.length < segment.T else None
        return np.stack(real + [pad] * (segment.T - segment.length))

    def replay_observations(self, segment: Segment) -> np.ndarray:
        """``(length - 1, *obs_shape)`` observations after stepping each saved state with its recorded action.

        Equal to ``segment.obs[1:length]`` exactly when the states are the ones the segment was recorded from.
        """
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
        tmp = path.with_name(f".{path.stem}.{threading.get_ident()}.tmp.mp4")
        encode_mp4(self.frames(segment), tmp, fps=self.fps)
        tmp.replace(path)
        return path


def _ended_frame(shape: tuple[int, ...]) -> np.ndarray:
    """Dark grey with "episode ended" in the middle: the absorbing state after a termination."""
    import cv2

    h, w = shape[:2]
    frame = np.full((h, w, 3), 40, dtype=np.uint8)
    text, font, scale = "episode ended", cv2.FONT_HERSHEY_SIMPLEX, max(0.4, w / 400)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(frame, text, ((w - tw) // 2, (h + th) // 2), font, scale, (200, 200, 200), 1, cv2.LINE_AA)
    return frame


def encode_mp4(frames: np.ndarray, path: Path, *, fps: int, crf: int = 23) -> None:
    """``frames (T, H, W, 3)`` uint8 (H, W even) → H.264 ``yuv420p`` MP4 with the index up front."""
    import av

    T, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs an even frame size, got {w}x{h}")
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        stream.codec_context.thread_count = 1
        for t in range(T):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frames[t], format="rgb24")))
        out.mux(stream.encode())


class ClipCache:
    """Clip files in ``directory`` (``<segment id>.mp4``), rendered by a pool of worker threads on demand.

    Args:
        directory: where clips are kept.
        load: ``segment id -> Segment`` (e.g. from the label store).
        env_kwargs: passed to ``gymnasium.make`` for the render envs.
        fps, size: see :class:`ClipRenderer`.
        workers: render threads.
    """

    def __init__(
        self,
        directory: Path,
        *,
        load: Callable[[int], Segment],
        env_kwargs: dict[str, Any] | None = None,
        fps: int = 0,
        size: int = 256,
        workers: int = 2,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load = load
        self._renderer_args = {"env_kwargs": env_kwargs, "fps": fps, "size": size}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._jobs: dict[int, Future[Path]] = {}

    def path(self, segment_id: int) -> Path:
        return self.directory / f"{int(segment_id)}.mp4"

    def prefetch(self, segment_ids: Iterable[int]) -> None:
        """Start rendering these clips in the background (those not on disk or under way)."""
        for sid in segment_ids:
            self._submit(int(sid))

    def get(self, segment_id: int, timeout: float | None = 60.0) -> Path:
        """The clip's file, rendering it first if needed (waits up to ``timeout`` s)."""
        return self._submit(int(segment_id)).result(timeout=timeout)

    def _submit(self, sid: int) -> Future[Path]:
        with self._lock:
            job = self._jobs.get(sid)
            if job is None or (job.done() and job.exception() is not None):
                if self.path(sid).exists():
                    job = Future()
                    job.set_result(self.path(sid))
                else:
                    job = self._pool.submit(self._render, sid)
                self._jobs[sid] = job
            return job

    def _render(self, sid: int) -> Path:
        segment = self._load(sid)
        renderers: dict[str, ClipRenderer] = self._local.__dict__.setdefault("renderers", {})
        renderer = renderers.get(segment.env_id)
        if renderer is None:
            renderer = renderers[segment.env_id] = ClipRenderer(segment.env_id, **self._renderer_args)
        return renderer.write(segment, self.path(sid))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
