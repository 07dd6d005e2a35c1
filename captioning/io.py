"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep every suffix (".weights.h5") at the end: some writers check the file name.
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp" + suffixes, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        _fsync(tmp)                       # the data is on disk before the name points at it
        os.replace(tmp, path)
        _fsync(path.parent)               # and the rename itself survives a power cut
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path) -> None:
    """Flush a file's (or a folder's) data to the disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:                       # e.g. folders on some file systems
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def build_lock(folder: Path):
    """Hold ``<folder>.lock`` (an exclusive flock) while ``folder`` is built: a second process
    waits, then finds it built. Inside the lock, temporary folders that a killed build left
    (``.<name>.*`` beside it, see ``tempfile.mkdtemp`` in the builders) are removed first:
    no live build can own them while the lock is held."""
    import fcntl
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            for stale in folder.parent.glob(f".{folder.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
