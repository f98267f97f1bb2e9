"""Writing a file so that a crash leaves the old one or the new one, never half of one.

Every file a run may be killed while writing (a checkpoint, the metrics table, an exported label file, a clip)
goes through :func:`atomic_write`: the writer fills a temporary file beside the target, which is then renamed
over it (a rename within one directory is atomic).

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from prefrl.io import atomic_write, atomic_write_text
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "state.json"
    ...     atomic_write_text(path, '{"timesteps": 0}')
    ...     with atomic_write(path) as part:
    ...         _ = part.write_text('{"timesteps": 2048}')
    ...     path.read_text(), sorted(p.name for p in Path(tmp).iterdir())
    ('{"timesteps": 2048}', ['state.json'])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path, *, suffix: str = ".tmp", name: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; once the block ends, it replaces ``path``.

    The temporary file is ``path``'s name plus ``suffix`` (or ``name``, when given), so a writer that appends its
    own extension to a path lacking it (``np.savez``: ``.npz``; SB3's ``save``: ``.zip``) is given a ``suffix``
    ending in that extension. If the block raises, ``path`` is left as it was and the temporary file removed.
    """
    path = Path(path)
    tmp = path.with_name(name if name is not None else path.name + suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` atomically; with ``fsync``, on disk before it replaces ``path``."""
    with atomic_write(path) as tmp, tmp.open("w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
