"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from captioning import CaptioningError


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed with its contents when this process exits (the bench's
    runs and feature caches: up to a GB each, which ``tempfile.mkdtemp`` alone leaves in /tmp
    for good)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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


class PidLock:
    """A lock file created atomically (``O_CREAT | O_EXCL``) holding its owner: host, pid, a
    random id and, inside a SLURM job, the job id. Not an ``flock``: flock is not reliable on
    NFS and Lustre (a cluster's shared home), where exclusive creation is.

    The holder refreshes the file's time while it holds it. A lock is stale, and is broken by
    the next taker, when its process is gone (same host), when it was not refreshed for
    ``LOCK_STALE_SECONDS`` (another host), or when it belongs to an earlier run of this very
    SLURM job (a requeued job's previous incarnation is dead: SLURM runs one at a time)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._mine: str | None = None
        self._done = threading.Event()
        self._refresher: threading.Thread | None = None

    def owner(self) -> dict | None:
        """The live holder's record (``host``, ``pid``, ...), or None (free, or stale)."""
        held = _read_lock(self.path)
        if held is None or held == self._mine or _lock_is_stale(self.path, held):
            return None
        try:
            owner = json.loads(held)
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock; with ``wait`` block while a live process holds it, else return False
        at once. A lock this very process holds already is taken over."""
        text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "job": os.environ.get("SLURM_JOB_ID"), "id": os.urandom(8).hex()})
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _read_lock(self.path)
                if held is not None and (_lock_is_stale(self.path, held) or _is_mine(held)):
                    _break_lock(self.path, held)
                    continue
                if not wait:
                    return False
                time.sleep(LOCK_POLL_SECONDS)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._mine = text
            self._done.clear()
            self._refresher = threading.Thread(target=_refresh_lock,
                                               args=(self.path, self._done), daemon=True)
            self._refresher.start()
            return True

    def release(self) -> None:
        self._done.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self._mine is not None and _read_lock(self.path) == self._mine:
            self.path.unlink(missing_ok=True)
        self._mine = None


@contextmanager
def build_lock(folder: Path):
    """Hold ``<folder>.lock`` (a ``PidLock``) while ``folder`` is built: a second process
    waits, then finds it built. Inside the lock, temporary folders that a killed build left
    (``.<name>.*`` beside it, see ``tempfile.mkdtemp`` in the builders) are removed first: no
    live build can own them while the lock is held."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = PidLock(folder.parent / f"{folder.name}.lock")
    lock.acquire(wait=True)
    try:
        for stale in folder.parent.glob(f".{folder.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.release()


def _read_lock(lock: Path) -> str | None:
    try:
        return lock.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _is_mine(held: str) -> bool:
    """Whether a lock's text names this very process (a lock it took and did not release)."""
    try:
        owner = json.loads(held)
    except ValueError:
        return False
    return (isinstance(owner, dict) and owner.get("host") == socket.gethostname()
            and owner.get("pid") == os.getpid())


def _lock_is_stale(lock: Path, held: str) -> bool:
    try:
        owner = json.loads(held)
        age = time.time() - lock.stat().st_mtime
    except (ValueError, FileNotFoundError):
        return False                    # being written or just released: look again
    if not isinstance(owner, dict):
        return age > LOCK_STALE_SECONDS
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("job") == job and owner.get("pid") != os.getpid():
        return True                     # this job's previous run (requeued): it is gone
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


def memory_cgroup_folder(root: Path = Path("/sys/fs/cgroup"),
                         proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path | None:
    """This process's memory cgroup folder: ``root/memory/<path>`` (cgroup v1) or ``root/<path>``
    (v2, the unified hierarchy), from ``/proc/self/cgroup``; None where there is none (not
    Linux, no memory controller mounted)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and (root / "memory").is_dir():
            return root / "memory" / path.lstrip("/")
    for line in lines:
        if line.startswith("0::") and (root / "cgroup.controllers").is_file():
            return root / line[3:].lstrip("/")
    return None

