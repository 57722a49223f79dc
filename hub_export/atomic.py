"""Write-then-rename helpers: a target path either holds a whole result or nothing.

Work happens under a temporary sibling name (`.<name>.partial-<random>`) in the target's own
folder, which is renamed onto the target only when complete. A process killed half-way
leaves the temporary sibling behind, never a partial target. Paths may be local or any
`tf.io.gfile` URL (`gs://...`).

Example:
    >>> with atomic_path("exports/bit_m-r50x1", overwrite=False) as temporary:
    ...     tf.saved_model.save(module, temporary)
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid

import tensorflow as tf

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


def remove(path: str) -> None:
    """Removes a file or a folder tree if it exists."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def refuse_existing(path: str, what: str, overwrite: bool) -> None:
    """Raises TargetExistsError if `path` exists and `overwrite` is False."""
    if not overwrite and tf.io.gfile.exists(path):
        raise TargetExistsError(
            f"{what} {path!r} already exists; refusing to overwrite it. Choose a new "
            "version or path, or pass overwrite=True (--overwrite on the command line)."
        )


@contextlib.contextmanager
def atomic_path(target: str, overwrite: bool = False, what: str = "Target"):
    """Yields a temporary sibling path; on success renames it onto `target`.

    The caller writes a file or a folder at the yielded path. On an exception (Ctrl-C too)
    the temporary is removed and `target` is untouched; a full, read-only or forbidden disk is
    raised as `bit_tf.training.file_errors.FileWriteError`, naming `target`. With `overwrite=True`
    an existing target is replaced; otherwise `TargetExistsError` is raised, before any work and
    again at the rename (in case another writer got there first).

    Example:
        >>> with atomic_path("out/model.tar.gz") as temporary:
        ...     write_archive(temporary)
    """
    refuse_existing(target, what, overwrite)
    parent, name = split(target)
    temporary = join(parent, f".{name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        with _disk_errors_named(target, temporary):
            tf.io.gfile.makedirs(parent)
            yield temporary
            if tf.io.gfile.isdir(temporary):
                _rename_folder(temporary, target, overwrite, what)
            else:
                refuse_existing(target, what, overwrite)
                tf.io.gfile.rename(temporary, target, overwrite=overwrite)
    finally:
        # Quietly: a read-only disk's error was raised above, and there is nothing to remove.
        with contextlib.suppress(OSError, tf.errors.OpError):
            remove(temporary)


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
        if tf.io.gfile.exists(target):
            kept = f"the existing {target} is left as it was"
        if tf.io.gfile.exists(temporary):
            kind = "folder" if tf.io.gfile.isdir(temporary) else "file"
            kept = f"the partial {kind} was removed; {kept}"
        raise FileWriteError.of(error, target, kept[0].upper() + kept[1:]) from error


def _rename_folder(temporary: str, target: str, overwrite: bool, what: str) -> None:
    # Folders cannot be renamed over an existing folder: move the old one aside first.
    refuse_existing(target, what, overwrite)
    old = None
    if tf.io.gfile.exists(target):
        old = f"{temporary}.old"
        tf.io.gfile.rename(target, old)
    try:
        tf.io.gfile.rename(temporary, target)
    except Exception:
        if old is not None:
            tf.io.gfile.rename(old, target)
        raise
    if old is not None:
        remove(old)
