"""The experiments and grids that ship with prefrl, found by name: ``prefrl train pendulum``,
``prefrl bench canary``.

They are package data (``prefrl/experiments/*.toml``, ``prefrl/grids/*.toml``), so an installed prefrl has
them as well as a source checkout; the checkout's top-level ``experiments`` and ``benchmarks/grids`` are
symbolic links to those directories, so the paths the docs use (``experiments/pendulum.toml``) keep working.
"""

from __future__ import annotations

import difflib
from importlib.resources import files
from pathlib import Path
from typing import Literal

from prefrl.config import ConfigError

Kind = Literal["experiments", "grids"]


def shipped_dir(kind: Kind) -> Path:
    """The directory of the shipped experiments or grids. pip installs a package as files on disk (never
    zipped), so the package data is a real directory that config loaders can read by path."""
    return Path(str(files("prefrl") / kind))


def shipped_names(kind: Kind) -> list[str]:
    """Names (file stems) of the shipped experiments or grids, sorted."""
    return sorted(p.stem for p in shipped_dir(kind).glob("*.toml"))


def resolve(arg: str | Path, kind: Kind) -> Path:
    """``arg`` as given when it is an existing path or looks like one (a ``.toml`` name or a name with a
    directory); otherwise the shipped file of that name, refused in one line listing the shipped names.

    Examples:
        >>> from prefrl.shipped import resolve
        >>> resolve("pendulum", "experiments").name, resolve("canary", "grids").parent.name
        ('pendulum.toml', 'grids')
    """
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or len(path.parts) != 1:
        return path
    file = shipped_dir(kind) / f"{path.name}.toml"
    if file.is_file():
        return file
    names = shipped_names(kind)
    close = difflib.get_close_matches(path.name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    what = "experiment" if kind == "experiments" else "grid"
    raise ConfigError(
        f"no {what} file or shipped {what} named '{arg}'; {hint}give a path to a TOML file or one of: "
        + ", ".join(names)
    )
