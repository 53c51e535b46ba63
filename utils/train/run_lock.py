"""One training process at a time per run folder: ``run.lock`` in ``save_dir`` names its owner (pid, host, start).

The owner also holds an exclusive ``flock`` on the file for as long as it runs. The kernel drops that lock when the
process ends, however it ends, so on the same host a lock file nobody holds is known to be stale (its owner was
killed before it could delete the file) and is taken over, without trusting a pid that may have been reused.
Where the file system has no flock, the pid decides: taken over when no process of that pid is alive.
A lock written on another host is never taken over: whether that run still lives cannot be told from here.
"""
import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import torch.distributed as dist

from utils.core.config import UserError
from utils.core.distributed import DistInfo
from utils.infer.checkpoint import write_cause

try:
    import fcntl
except ImportError:  # Windows: the pid check alone
    fcntl = None

LOCK_NAME = "run.lock"


class RunFolderBusy(UserError):
    """Another live process trains into the same save_dir."""


class RunFolderLock:
    """``run.lock`` of ``save_dir``, held between ``acquire`` and ``release`` (or as a context manager)."""

    def __init__(self, save_dir: str | os.PathLike, *, log: Callable[[str], None] = print):
        self.path = Path(save_dir) / LOCK_NAME
        self.log = log
        self.fd: int | None = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock, or raises RunFolderBusy naming its owner; an unwritable save_dir is a UserError too."""
        for _ in range(10):  # a retry only when the owner deleted the file between our open and our lock
            fd = self._open()
            try:
                if self._take(fd):
                    self.fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunFolderBusy(f"{self.path}: changed hands repeatedly while this run tried to lock it; try again")

    def release(self) -> None:
        """Deletes the lock file (when it is still this run's) and drops the lock. Safe to call twice."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def _open(self) -> int:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"save_dir={folder}: cannot write there ({write_cause(err)}); pass another --save_dir "
                            "or make the folder writable") from err

    def _take(self, fd: int) -> bool:
        """True once ``fd`` holds the lock with this process's details written in it; False to open again."""
        locked = _try_flock(fd)
        owner = _read_owner(fd)
        if locked is False:
            raise RunFolderBusy(self._busy(owner))
        if not _same_file(fd, self.path):
            return False
        if owner:
            self._check_stale(owner, flock_held=locked is True)
        _write_owner(fd, self.path)
        return True

    def _check_stale(self, owner: dict, *, flock_held: bool) -> None:
        """Raises RunFolderBusy unless the owner of a leftover lock file is known to be gone; says so when taken over.
        With flock, nobody holding it proves that for this host; without, the pid must be gone."""
        host = owner.get("host")  # None: the file could not be read
        if host is not None and host != socket.gethostname():
            raise RunFolderBusy(f"{self.path}: locked by pid {owner.get('pid')} on host {host} since "
                                f"{owner.get('started')}; whether that run still goes cannot be checked from here: "
                                "pass another --save_dir, or delete the lock file once that run has ended")
        if not flock_held and (host is None or _pid_alive(owner.get("pid"))):
            raise RunFolderBusy(self._busy(owner))
        self.log(f"note: {self.path}: taking over the lock of pid {owner.get('pid')} (started {owner.get('started')}),"
                 " which is no longer running")

    def _busy(self, owner: dict) -> str:
        who = f"pid {owner.get('pid')} on host {owner['host']}" if owner.get("host") else "another process"
        since = f" (since {owner['started']})" if owner.get("started") else ""
        return (f"save_dir={self.path.parent} is in use by {who}{since}: pass another --save_dir, "
                "or wait for that run to end")


@contextlib.contextmanager
def claim_run_folder(save_dir: str | os.PathLike, *, dist_info: DistInfo,
                     log: Callable[[str], None] = print) -> Iterator[None]:
    """Holds ``save_dir``'s lock on rank 0 for the body; every rank raises rank 0's error when it is refused (so
    no rank is left waiting for the others)."""
    lock = RunFolderLock(save_dir, log=log) if dist_info.is_main else None
    refused = None
    try:
        if lock is not None:
            lock.acquire()
    except UserError as err:
        refused = err
    if dist_info.enabled:
        message = [str(refused) if refused is not None else None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and refused is None:
            refused = RunFolderBusy(message[0])
    if refused is not None:
        raise refused
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this system or file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: no flock on this file system


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file ``fd`` opened (a releasing owner deletes it before letting go)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_owner(fd: int) -> dict:
    """The owner details in the lock file; {} for an empty file, {"pid": "?"} for one that cannot be read."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", errors="replace").strip()
    if not text:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?"}
    return owner if isinstance(owner, dict) else {"pid": "?"}


def _write_owner(fd: int, path: Path) -> None:
    details = {"pid": os.getpid(), "host": socket.gethostname(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(details, indent=1) + "\n").encode("utf-8"))
    except OSError as err:
        raise UserError(f"save_dir={path.parent}: cannot write {path.name} ({write_cause(err)}); pass another "
                        "--save_dir or free space there") from err


def _pid_alive(pid) -> bool:
    """Whether a process of ``pid`` runs on this host; True when that cannot be told (the safe answer)."""
    if not isinstance(pid, int) or os.name != "posix":  # on Windows os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
