"""Shared fixtures: a throwaway Postgres server for the label-store tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefrl.labeler import free_port

POSTGRES_URL = "PREFRL_TEST_POSTGRES_URL"
"""Set it to a SQLAlchemy URL of an empty database to test against a server of your own instead."""


def _postgres_bin() -> Path | None:
    """The newest Debian/Ubuntu-style PostgreSQL bin directory, or wherever ``initdb`` is on the PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if dirs:
        return Path(dirs[-1])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of an empty Postgres database, alive for the whole test session.

    ``$PREFRL_TEST_POSTGRES_URL`` if it is set; otherwise a throwaway server (``initdb`` + ``pg_ctl`` in a
    temporary directory, on 127.0.0.1 and a free port, trust authentication) that is stopped and deleted
    afterwards. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
    """
    if os.environ.get(POSTGRES_URL):
        yield os.environ[POSTGRES_URL]
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is not installed: the label-store tests also run on Postgres. Install it "
            f"(Debian: apt-get install postgresql) or set {POSTGRES_URL} to an empty database's URL"
        )
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="prefrl-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, the throwaway Postgres server needs a 'postgres' user to run as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"throwaway Postgres: {' '.join(args[:1])} failed:\n{done.stdout}{done.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "prefrl", "--no-sync", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefrl", "prefrl_test")
        yield f"postgresql+psycopg://prefrl@127.0.0.1:{port}/prefrl_test"
    finally:
        stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run([*prefix, *stop], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (tiny models run faster so), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kill_after(monkeypatch):
    """``kill_after(module, name, n)``: ``module.name`` runs as usual but raises ``KeyboardInterrupt`` right after
    its ``n``-th call (a run killed just after a checkpoint); returns the original, to put back."""

    def arm(module, name: str, n: int):
        real = getattr(module, name)
        calls = {"n": 0}

        def killed(*args, **kwargs):
            out = real(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(module, name, killed)
        return real

    return arm
