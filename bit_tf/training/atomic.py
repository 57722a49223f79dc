"""The one atomic write of the package: a target path either holds a whole result or nothing.

Work happens under a temporary sibling name (`.<name>.partial-<random>`) in the target's own
folder; what was written there is flushed to the disk (`fsync`, local paths) and only then
renamed onto the target. A process killed half-way leaves the temporary sibling behind, never
a partial target. Paths may be local (Python's `os`: no TensorFlow needed, so the model code
runs on the JAX backend) or any `tf.io.gfile` URL (`gs://...`).

`atomic_path` is the mechanism (a context manager yielding the temporary path, for a file or a
folder); `write_through` calls a writer with the temporary path; `write_bytes` and `write_text`
write content. Every writer of the package (checkpoints, progress files, weights, downloads,
exports) goes through them.

Example:
    >>> with atomic_path("exports/bit_m-r50x1", overwrite=False) as temporary:
    ...     tf.saved_model.save(module, temporary)
    >>> write_text("runs/pets/progress.json", json.dumps(progress))
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable

from bit_tf.training.file_errors import FileWriteError, disk_problem


class TargetExistsError(FileExistsError):
    """The export or publish target exists and overwriting was not asked for."""


def is_url(path: str) -> bool:
    """True for `scheme://...` paths (gs://, s3://, hdfs://), False for local paths."""
    return "://" in path and not path.startswith("file://")


def join(folder: str, *names: str) -> str:
    """Joins path parts with '/' for URLs and os.path.join for local paths."""
    return posixpath.join(folder, *names) if is_url(folder) else os.path.join(folder, *names)


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a local path or URL, ignoring a trailing slash."""
    path = path.rstrip("/") if is_url(path) else os.path.abspath(path)
    return posixpath.split(path) if is_url(path) else os.path.split(path)


def exists(path: str) -> bool:
    """Whether a local path or URL exists."""
    return _gfile().exists(path) if is_url(path) else os.path.lexists(path)


def isdir(path: str) -> bool:
    """Whether a local path or URL is a folder."""
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def remove(path: str) -> None:
    """Removes a file or a folder tree if it exists."""
    if is_url(path):
        if _gfile().isdir(path):
            _gfile().rmtree(path)
        elif _gfile().exists(path):
            _gfile().remove(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _makedirs(path: str) -> None:
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _rename(source: str, target: str, overwrite: bool = False) -> None:
    if is_url(source):
        _gfile().rename(source, target, overwrite=overwrite)
    elif overwrite:
        os.replace(source, target)
    else:
        os.rename(source, target)


def _gfile():
    import tensorflow as tf  # only for URLs: local paths need no TensorFlow

    return tf.io.gfile


def refuse_existing(path: str, what: str, overwrite: bool) -> None:
    """Raises TargetExistsError if `path` exists and `overwrite` is False."""
    if not overwrite and exists(path):
        raise TargetExistsError(
            f"{what} {path!r} already exists; refusing to overwrite it. Choose a new "
            "version or path, or pass overwrite=True (--overwrite on the command line)."
        )


@contextlib.contextmanager
def atomic_path(
    target: str,
    overwrite: bool = False,
    what: str = "Target",
    suffix: str = "",
    durable: bool = True,
):
    """Yields a temporary sibling path; on success flushes it to the disk and renames it onto
    `target`.

    The caller writes a file or a folder at the yielded path, which ends with `suffix` (for
    writers that insist on a file name ending, such as Keras' `.keras`). With `durable=False`
    nothing is flushed (a cache's copy, which a crash may lose). On an exception
    (Ctrl-C too) the temporary is removed and `target` is untouched; a full, read-only or
    forbidden disk is raised as `bit_tf.training.file_errors.FileWriteError`, naming `target`.
    With `overwrite=True` an existing target is replaced; otherwise `TargetExistsError` is
    raised, before any work and again at the rename (in case another writer got there first).

    Example:
        >>> with atomic_path("out/model.tar.gz") as temporary:
        ...     write_archive(temporary)
    """
    target = os.fspath(target)
    refuse_existing(target, what, overwrite)
    parent, name = split(target)
    temporary = join(parent, f".{name}.partial-{uuid.uuid4().hex[:12]}{suffix}")
    try:
        with _disk_errors_named(target, temporary):
            _makedirs(parent)
            yield temporary
            if durable:
                flush_to_disk(temporary)
            if isdir(temporary):
                _rename_folder(temporary, target, overwrite, what)
            else:
                refuse_existing(target, what, overwrite)
                _rename(temporary, target, overwrite=overwrite)
            if durable:
                flush_folder_entries(parent)
    finally:
        # Quietly: a read-only disk's error was raised above, and there is nothing to remove.
        with contextlib.suppress(Exception):
            remove(temporary)


def write_through(
    path: str,
    write: Callable[[str], object],
    overwrite: bool = True,
    suffix: str = "",
    durable: bool = True,
) -> str:
    """Calls `write(temporary)` for a temporary sibling of `path`, then renames it onto `path`
    (see `atomic_path`); returns `path`.

    Raises:
        FileWriteError: the disk is full, read-only or forbidden; the temporary is removed and
            `path` left as it was.
        TargetExistsError: `path` exists and `overwrite` is False.

    Example:
        >>> write_through("runs/pets/last.keras", model.save, suffix=".keras")
        'runs/pets/last.keras'
    """
    with atomic_path(path, overwrite, "File", suffix, durable) as temporary:
        write(temporary)
    return os.fspath(path)


def write_bytes(path: str, content: bytes, overwrite: bool = True, durable: bool = True) -> str:
    """Writes `content` to `path` atomically (see `atomic_path`); returns `path`.

    Example:
        >>> write_bytes("cache/w.npz.sha256", b"9f86...  w.npz\\n")
        'cache/w.npz.sha256'
    """

    def write(temporary: str) -> None:
        if is_url(temporary):
            with _gfile().GFile(temporary, "wb") as stream:
                stream.write(content)
        else:
            with open(temporary, "wb") as stream:
                stream.write(content)

    return write_through(path, write, overwrite, durable=durable)


def write_text(path: str, text: str, overwrite: bool = True) -> str:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_path`); returns `path`.

    Example:
        >>> write_text("runs/pets/progress.json", json.dumps({"step": 50}))
        'runs/pets/progress.json'
    """
    return write_bytes(path, text.encode("utf-8"), overwrite)


def flush_to_disk(path: str) -> None:
    """Makes what was written at a local `path` (a file, or every file of a folder and the
    folder itself) durable with `fsync`; URLs are left to their file system.

    Example:
        >>> flush_to_disk("exports/.bit_m-r50x1.partial-0a1b2c")
    """
    if is_url(path) or not os.path.exists(path):
        return
    if os.path.isdir(path):
        for folder, _, names in os.walk(path, topdown=False):
            for name in names:
                if not os.path.islink(os.path.join(folder, name)):  # a link's file is elsewhere
                    _fsync(os.path.join(folder, name), os.O_RDONLY)
            _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    else:
        _fsync(path, os.O_RDONLY)


def flush_folder_entries(folder: str) -> None:
    """Makes the names in a local `folder` durable (a rename into it survives a crash) with one
    `fsync` of the folder itself, not of what it holds: other writers may be adding and
    removing files inside it meanwhile. URLs are left to their file system.

    Example:
        >>> flush_folder_entries("runs/pets")
    """
    if is_url(folder) or not os.path.isdir(folder):
        return
    _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some file systems cannot sync a folder (EINVAL); the rename is still atomic there.
        if disk_problem(error) is not None:
            raise
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _disk_errors_named(target: str, temporary: str):
    """Raises a full, read-only or forbidden disk met inside the block as a `FileWriteError`
    naming `target` (TensorFlow's own error names a temporary file inside it); `temporary` is
    removed as the error leaves `atomic_path`."""
    try:
        yield
    except Exception as error:
        if disk_problem(error) is None:
            raise
        kept = "nothing was written there"
        if exists(target):
            kept = f"the existing {target} is left as it was"
        if exists(temporary):
            kind = "folder" if isdir(temporary) else "file"
            kept = f"the partial {kind} was removed; {kept}"
        raise FileWriteError.of(error, target, kept[0].upper() + kept[1:]) from error


def _rename_folder(temporary: str, target: str, overwrite: bool, what: str) -> None:
    # Folders cannot be renamed over an existing folder: move the old one aside first.
    refuse_existing(target, what, overwrite)
    old = None
    if exists(target):
        old = f"{temporary}.old"
        _rename(target, old)
    try:
        _rename(temporary, target)
    except Exception:
        if old is not None:
            _rename(old, target)
        raise
    if old is not None:
        remove(old)
