"""One run per folder: a run holds its output folder for as long as it runs.

Two runs writing into one folder (two `bit-finetune` commands with the same `--export_dir`, a
library call and a command sharing a `checkpoint_dir`) would leave one run's `progress.json`
beside the other's `model.keras`. `holding(folder)` takes an operating-system lock
(`fcntl.flock`) on a lock file beside the folder, `.<name>.lock` in its parent, and keeps it
until the block ends; a second run asking for the same folder gets `RunLockedError`, which names
the first run's process id, host and program. The kernel releases the lock when its process
ends however it ends, so a lock left by a killed run (SIGKILL, a power cut) is taken over by the
next run, with a warning naming the run that left it. The lock file is removed when the lock is
released.

Locks are per process: a process may hold the same folder twice (a command and the library
call it makes), and the folder is released when the outermost block ends. Folders given as URLs
(gs://...) are not locked: the operating system cannot lock a bucket.

This module uses the standard library only, so that it can be imported without TensorFlow.

Example:
    >>> with holding("runs/pets", program="bit-finetune", flag="--export_dir"):
    ...     train_and_write_files("runs/pets")
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: How many times a lock is tried again when its file was replaced while it was being taken.
_ATTEMPTS = 20


class RunLockedError(RuntimeError):
    """The folder is held by another run that is still running.

    Attributes:
        folder: the folder asked for.
        holder: what the lock file says of the run holding it ({"pid", "host", "program",
            "started"}; empty where it had not written it yet).

    Example:
        >>> try:
        ...     with holding("runs/pets"):
        ...         ...
        ... except RunLockedError as error:
        ...     print(error.holder["pid"])
    """

    def __init__(self, message: str, folder: str, holder: dict):
        super().__init__(message)
        self.folder = folder
        self.holder = holder


def lock_path(folder: str) -> str:
    """The lock file of `folder`: `.<name>.lock` in its parent folder.

    Beside the folder rather than inside it, so that a folder that is written elsewhere and
    renamed into place (an export) can be locked too.

    Example:
        >>> lock_path("/data/runs/pets")
        '/data/runs/.pets.lock'
    """
    parent, name = os.path.split(os.path.abspath(folder))
    return os.path.join(parent, f".{name}.lock")


def describe_holder(holder: dict) -> str:
    """The run in a lock file, as a phrase: "process 1234 on host gpu-7 (bit-finetune, started
    2025-01-31 10:02:03)".

    Example:
        >>> describe_holder({"pid": 1234, "host": "gpu-7"})
        'process 1234 on host gpu-7'
    """
    if not holder.get("pid"):
        return "a run that is just starting (it has not written its process id yet)"
    text = f"process {holder['pid']} on host {holder.get('host', '?')}"
    details = [str(holder[key]) for key in ("program",) if holder.get(key)]
    if holder.get("started"):
        details.append(f"started {holder['started']}")
    return text + (f" ({', '.join(details)})" if details else "")


class _Held:
    """A lock this process holds: its open file and how many blocks hold it."""

    def __init__(self, descriptor: int, path: str):
        self.descriptor = descriptor
        self.path = path
        self.count = 1


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _read_holder(descriptor: int) -> dict:
    """What the lock file open at `descriptor` says of its run ({} if nothing readable)."""
    try:
        text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_folder(folder: str, flag: str | None) -> str:
    return f"{flag}={folder}" if flag else folder


def _open_locked(path: str, folder: str, flag: str | None) -> int:
    """The descriptor of `path`, created if missing and locked by this process."""
    for _ in range(_ATTEMPTS):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(
                f"{_describe_folder(folder, flag)} is in use by another run, "
                f"{describe_holder(holder)}: wait for it to end, or give another folder.",
                folder,
                holder,
            ) from None
        # The holder before us may have removed the file after we opened it: then we hold a
        # lock on a file nobody else sees, and must lock the one at `path` instead.
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)
    raise RunLockedError(
        f"{_describe_folder(folder, flag)}: its lock file {path} keeps being replaced; another "
        "run is starting and ending there repeatedly.",
        folder,
        {},
    )


def _write_holder(descriptor: int, program: str | None) -> dict:
    """Writes this process into the lock file it holds; returns what the file held before."""
    before = _read_holder(descriptor)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "program": program or os.path.basename(sys.argv[0] or "python"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    return before


def acquire(folder: str, program: str | None = None, flag: str | None = None) -> str | None:
    """Takes the lock of `folder` for this process (see `holding`); returns its key for
    `release`, or None for a URL, which is not locked.

    Raises:
        RunLockedError: another process holds the folder.
        OSError: the lock file cannot be made (a read-only or full disk, no permission).

    Example:
        >>> key = acquire("runs/pets")
        >>> release(key)
    """
    if "://" in folder:
        log.debug("%s is a URL: not locked.", folder)
        return None
    path = lock_path(folder)
    key = os.path.realpath(path)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return key
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            descriptor = _open_locked(path, folder, flag)
        except OSError as error:  # a read-only or full disk: named by the folder asked for
            raise OSError(error.errno, error.strerror, folder) from error
        try:
            before = _write_holder(descriptor, program)
        except OSError:
            _unlink_and_close(descriptor, path)
            raise
        _held[key] = _Held(descriptor, path)
    if before.get("pid"):
        log.warning(
            "%s was held by %s, which ended without releasing it (killed?); this run takes it "
            "over.",
            folder,
            describe_holder(before),
        )
    return key


def _unlink_and_close(descriptor: int, path: str) -> None:
    # Removed while still locked, so that no other run can lock the file being removed.
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(descriptor), os.stat(path)):
            os.unlink(path)
    os.close(descriptor)


def release(key: str | None) -> None:
    """Releases a lock `acquire` took (once per `acquire`); removes the lock file with the last.

    Example:
        >>> release(acquire("runs/pets"))
    """
    if key is None:
        return
    with _held_guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _held[key]
            _unlink_and_close(held.descriptor, held.path)


def release_all() -> None:
    """Releases every lock this process holds, for a program about to leave with `os._exit`
    (which runs no `finally` blocks; the kernel would release the locks, but leave the files).

    Example:
        >>> release_all()
        >>> os._exit(130)
    """
    with _held_guard:
        for held in _held.values():
            _unlink_and_close(held.descriptor, held.path)
        _held.clear()


@contextlib.contextmanager
def holding(
    folder: str | None, program: str | None = None, flag: str | None = None
) -> Iterator[None]:
    """Holds `folder` for this run inside the block (nothing for None or a URL).

    Args:
        folder: the run's output folder (it need not exist; its parent is made if missing).
        program: the program named to a second run that finds the folder held.
        flag: the flag that named the folder ("--export_dir"), for the message.

    Raises:
        RunLockedError: another process holds the folder: one sentence naming it (process id,
            host, program and start time) and what to do.

    Example:
        >>> with holding("runs/pets", program="bit-finetune", flag="--export_dir"):
        ...     ...
    """
    key = acquire(folder, program, flag) if folder else None
    try:
        yield
    finally:
        release(key)


__all__ = [
    "RunLockedError",
    "acquire",
    "describe_holder",
    "holding",
    "lock_path",
    "release",
    "release_all",
]
