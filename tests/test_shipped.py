"""The shipped experiments and grids: package data of a built wheel, found by name from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prefrl.cli import main
from prefrl.shipped import resolve, shipped_dir, shipped_names

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_paths_lead_to_the_shipped_files():
    # experiments/ and benchmarks/grids/ are links to the package's own directories: one copy of each file.
    assert (ROOT / "experiments").resolve() == shipped_dir("experiments").resolve()
    assert (ROOT / "benchmarks" / "grids").resolve() == shipped_dir("grids").resolve()
    assert {"pendulum", "hopper", "atari_pong", "text_sentiment_tiny"} <= set(shipped_names("experiments"))
    assert {"canary", "smoke", "mujoco", "atari"} <= set(shipped_names("grids"))


def test_a_bare_name_is_a_shipped_file_and_a_path_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("pendulum", "experiments") == shipped_dir("experiments") / "pendulum.toml"
    assert resolve("canary", "grids") == shipped_dir("grids") / "canary.toml"
    # A path (a .toml name, a directory in it, or an existing file) is left to the loader, as before.
    assert resolve("experiments/pendulum.toml", "experiments") == Path("experiments/pendulum.toml")
    assert resolve("mine.toml", "grids") == Path("mine.toml")
    (tmp_path / "pendulum").write_text('name = "mine"\n')
    assert resolve("pendulum", "experiments") == Path("pendulum")


@pytest.mark.parametrize(
    "argv, wanted",
    [
        (["train", "pendulm"], "no experiment file or shipped experiment named 'pendulm'; did you mean 'pendulum'?"),
        (["bench", "canry"], "no grid file or shipped grid named 'canry'; did you mean 'canary'?"),
    ],
)
def test_a_bad_name_is_refused_in_one_line_listing_the_shipped_names(argv, wanted, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and wanted in err
    kind = "experiments" if argv[0] == "train" else "grids"
    assert err.rstrip().endswith(", ".join(shipped_names(kind)))


def test_the_wheel_ships_every_experiment_and_grid_and_finds_them_by_name(tmp_path):
    # Built from a copy of the sources, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("prefrl", "envs"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("prefrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("experiments", "grids"):
        shipped = sorted(p.name for p in (ROOT / "prefrl" / kind).glob("*.toml"))
        assert shipped and {f"prefrl/{kind}/{n}" for n in shipped} <= names

    # Installed is unpacked: from the unpacked wheel, away from any checkout, names find the package data, and a
    # shipped grid finds the experiments it names there too.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = (
        "import prefrl; from prefrl.shipped import resolve; from prefrl.bench import load_grid\n"
        "assert prefrl.__file__.startswith(SITE), prefrl.__file__\n"
        "print(resolve('pendulum', 'experiments'))\n"
        "grid = load_grid(resolve('canary', 'grids'))\n"
        "print(sorted({j.env for j in grid.jobs}))\n"
    ).replace("SITE", repr(str(site)))
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    found, envs = out.stdout.splitlines()
    assert Path(found) == site / "prefrl" / "experiments" / "pendulum.toml"
    assert envs == "['Acrobot-v1', 'CartPole-v1', 'Pendulum-v1']"
