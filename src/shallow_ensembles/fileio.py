"""Atomic file writes: a temporary file in the target's folder, renamed over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_AFTER_S = 3600.0
"""Temporary files of this package older than this (s) and of no live process are removed."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block succeeds, rename it to ``path``.

    A reader never sees a half-written file, and a crash leaves the old file intact: the data
    are flushed to disk (fsync) before the rename, and the folder after it. The temporary name
    ``.NAME.PID.XXXX.tmp`` carries the writer's process id, so leftovers of killed writers
    (dead process, or older than :data:`STALE_AFTER_S`) are removed on the next write. The result
    gets the usual permissions (``mkstemp`` creates files readable by the owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    os.close(handle)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files next to ``path`` left by dead writers; returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        middle = tmp.name[len(path.name) + 2:-len(".tmp")].split(".")
        pid = int(middle[0]) if len(middle) == 2 and middle[0].isdigit() else None
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_AFTER_S
            if (pid is not None and not _alive(pid)) or old:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another writer finished or cleaned it meanwhile
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to disk; folders that refuse it are skipped."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
            os.fsync(fd)
    finally:
        os.close(fd)
