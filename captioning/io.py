"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import os
import tempfile
import threading
import time
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


LOCK_STALE_SECONDS = 300     # a lock from another host not refreshed for this long is stale
LOCK_REFRESH_SECONDS = 30    # how often its holder refreshes it
LOCK_POLL_SECONDS = 0.5


@contextmanager
def build_lock(folder: Path):
    """Hold ``<folder>.lock`` while ``folder`` is built: a second process waits, then finds it
    built. Inside the lock, temporary folders that a killed build left (``.<name>.*`` beside
    it, see ``tempfile.mkdtemp`` in the builders) are removed first: no live build can own them
    while the lock is held.

    The lock is a file created atomically (``O_CREAT | O_EXCL``) holding the host and pid, not
    an ``flock``: flock is not reliable on NFS and Lustre (a cluster's shared home), where
    exclusive creation is. A holder refreshes the file's time while it builds; a waiter breaks
    a stale lock: one whose process is gone (same host), or not refreshed for
    ``LOCK_STALE_SECONDS`` (another host)."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f"{folder.name}.lock"
    mine = _take_lock(lock)
    done = threading.Event()
    refresher = threading.Thread(target=_refresh_lock, args=(lock, done), daemon=True)
    refresher.start()
    try:
        for stale in folder.parent.glob(f".{folder.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        done.set()
        refresher.join()
        if _read_lock(lock) == mine:
            lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> str:
    """Create ``lock`` exclusively (waiting while another live process holds it); -> its text."""
    import json
    import socket

    text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "id": os.urandom(8).hex()})
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            if held is not None and _lock_is_stale(lock, held):
                _break_lock(lock, held)
                continue
            time.sleep(LOCK_POLL_SECONDS)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return text


def _read_lock(lock: Path) -> str | None:
    try:
        return lock.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _lock_is_stale(lock: Path, held: str) -> bool:
    import json
    import socket

    try:
        owner = json.loads(held)
        age = time.time() - lock.stat().st_mtime
    except (ValueError, FileNotFoundError):
        return False                    # being written or just released: look again
    if not isinstance(owner, dict):
        return age > LOCK_STALE_SECONDS
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner.get("pid", -1)), 0)
        except ProcessLookupError:
            return True                 # its process is gone
        except (PermissionError, ValueError, OverflowError):
            pass                        # alive (another user's) or unreadable: go by age
    return age > LOCK_STALE_SECONDS


def _break_lock(lock: Path, held: str) -> None:
    """Remove a stale lock. Renamed first (one waiter wins the rename); if what was renamed is
    not the stale lock judged (another waiter broke it and a new holder took it meanwhile),
    it is put back."""
    aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if _read_lock(aside) != held:
        try:
            os.link(aside, lock)        # fails if yet another holder exists: then theirs stands
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _refresh_lock(lock: Path, done: threading.Event) -> None:
    while not done.wait(LOCK_REFRESH_SECONDS):
        try:
            os.utime(lock)
        except OSError:
            pass


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def ensure_free_space(folder: Path, needed: int, what: str, fix: str) -> None:
    """Before ``what`` writes about ``needed`` bytes under ``folder``: enough free space there,
    or one error with the size needed, the free space, the folder and ``fix`` (the key that
    points elsewhere). Checked before any work, so a full disk never ends a long build."""
    import shutil

    from captioning import CaptioningError

    probe = Path(os.path.expanduser(str(folder)))
    while not probe.exists() and probe != probe.parent:   # the disk the folder will be on
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > 2e9:                      # a large write is announced before it starts
        print(f"{what} will write about {human_bytes(needed)} in {folder} "
              f"({human_bytes(free)} free there)", flush=True)
    if free < needed:
        raise CaptioningError(
            f"Not enough disk space: {what} needs about {human_bytes(needed)} in {folder}, but "
            f"only {human_bytes(free)} is free there. Free some space, or {fix}.")
