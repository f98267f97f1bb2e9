"""The web labeler: people compare clips of the agent in a browser while it trains.

``prefrl label RUN`` serves a run's queue; ``prefrl train EXP --oracle human`` serves it beside training.
:class:`LabelerServer` runs the app (uvicorn) in the foreground or in a background thread;
:func:`simulate_labeler` answers through the real HTTP API with a synthetic teacher.

Needs the ``labeler`` extra: ``pip install 'prefrl[labeler]'``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prefrl.config import ConfigError


def require_labeler() -> None:
    """Refuse, with the install command, when the ``labeler`` extra is missing."""
    try:
        import av  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the web labeler needs {e.name}: pip install 'prefrl[labeler]'") from None


class LabelerServer:
    """The labeler for the label store at ``db`` (a SQLite path or SQLAlchemy URL), clips kept in ``clip_dir``.

    Clips are rendered as soon as questions are queued (the store is looked at every ``poll_s``), for the
    next ``prefetch`` open questions, by ``render_workers`` processes.

    Args:
        host, port: where to listen (port 0 picks a free one). Any host but loopback requires ``token``,
            generated when not given.
        task: what labelers should reward, shown on the page.
        env_kwargs, clip_fps, clip_size, clip_effects, render_workers: clip rendering (``clip_fps`` is
            ``max_fps``; see :class:`prefrl.clips.ClipCache`).
        prefetch: open questions whose clips are rendered ahead of the labelers.
    """

    def __init__(
        self,
        db: str | Path,
        *,
        clip_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8000,
        task: str = "",
        token: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        clip_fps: int = 30,
        clip_size: int = 256,
        clip_effects: bool = False,
        render_workers: int = 0,
        prefetch: int = 10,
        lease_s: float = 120.0,
        poll_s: float = 0.5,
    ) -> None:
        require_labeler()
        import uvicorn

        from prefrl.clips import ClipCache
        from prefrl.labeler.server import create_app, is_loopback, new_token
        from prefrl.labeler.store import LabelQueue

        if token is None and not is_loopback(host):
            token = new_token()
        self.token = token
        self.host = host
        self.queue = LabelQueue(db, lease_s=lease_s)
        self.clips = ClipCache(
            clip_dir,
            load=self.queue.segment,
            env_kwargs=env_kwargs,
            max_fps=clip_fps,
            size=clip_size,
            effects=clip_effects,
            workers=render_workers,
        )
        self.app = create_app(self.queue, self.clips, task=task, token=token, prefetch=prefetch)
        self.poll_s = poll_s
        self._stop_ahead = threading.Event()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)  # connections wait in the backlog from now on, not refused until uvicorn is up
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}"
        return base + (f"/?token={self.token}" if self.token else "/")

    @property
    def api(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        ahead = threading.Thread(target=self._render_ahead, name="labeler-render-ahead", daemon=True)
        ahead.start()
        try:
            self.server.run(sockets=[self._sock])
        finally:
            self._stop_ahead.set()

    def _render_ahead(self) -> None:
        """Render the clips of newly queued questions before anyone asks for them."""
        while not self._stop_ahead.is_set():
            try:
                self.app.state.render_ahead()
            except Exception as e:  # a hiccup of the store must not end clip rendering; the next look retries
                logging.getLogger(__name__).warning("rendering clips ahead: %s", e)
            self._stop_ahead.wait(self.poll_s)

    def start(self) -> LabelerServer:
        """Serve in a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="labeler", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the labeler server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._stop_ahead.set()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.clips.close()
        self.queue.close()


class LabelerProcess:
    """``prefrl label RUN`` in a child process on loopback, for scripts, notebooks and tests.

    ``args`` are more ``prefrl label`` options (e.g. ``("--clip-size", "128")``); ``env`` adds environment
    variables. :meth:`start` returns once the server answers, or raises with the child's error output.
    A context manager: leaving the block stops the child.
    """

    def __init__(self, run: str | Path, args: tuple[str, ...] = (), *, env: dict[str, str] | None = None) -> None:
        self.run = Path(run)
        self.args = tuple(args)
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> LabelerProcess:
        import httpx

        cmd = [sys.executable, "-m", "prefrl.cli", "label", str(self.run), "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the labeler exited: {self.proc.stderr.read().decode().strip()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the labeler did not answer within {timeout:g} s")

    def kill(self) -> None:
        """End the child at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """End the child gracefully; kill it if it has not exited after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LabelerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulate_labeler(
    api: str,
    queue: Any,
    teacher: Any,
    *,
    stop: threading.Event,
    token: str | None = None,
    name: str = "simulated",
    idle_s: float = 0.2,
) -> int:
    """Answer questions through the HTTP API at ``api`` with ``teacher`` (a :class:`~prefrl.oracles.SyntheticOracle`)
    until ``stop`` is set; segments are read from ``queue`` (the true rewards never cross the API). Returns
    the number of answers given."""
    import httpx

    from prefrl.data import Query

    session = uuid.uuid4().hex
    headers = {"X-Token": token} if token else {}
    given = 0
    with httpx.Client(base_url=api, headers=headers, timeout=60) as http:
        while not stop.is_set():
            r = http.post("/api/next", json={"session": session})
            r.raise_for_status()
            q = r.json()["query"]
            if q is None:
                stop.wait(idle_s)
                continue
            segments = tuple(queue.segment(i) for i in q["segments"])
            label = teacher.answer(Query(segments, id=q["id"])).label
            body = {"answer_id": uuid.uuid4().hex, "query_id": q["id"], "label": label, "labeler": name}
            r = http.post("/api/answer", json=body | {"session": session})
            if r.status_code != 409:  # 409: someone answered it first
                r.raise_for_status()
                given += 1
    return given
