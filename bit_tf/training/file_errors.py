"""What went wrong with the disk, in words: a full disk, a read-only or forbidden folder.

Python reports a full disk as `OSError(ENOSPC)` (often without the file's name: Keras' `.keras`
writer gives none), TensorFlow as a `tf.errors.ResourceExhaustedError` naming a temporary file
deep inside the folder being written. `disk_problem` reads either as a short phrase ("no space
is left on the device"), and `FileWriteError` is what the package's writers raise instead: it
names the file or folder the user asked for, what is left of it, and what to do.

Example:
    >>> try:
    ...     model.save("runs/pets/model.keras")
    ... except OSError as error:
    ...     if disk_problem(error) is None:
    ...         raise
    ...     raise FileWriteError.of(error, "runs/pets/model.keras") from error
"""

from __future__ import annotations

import errno

#: errno values that are the state of the disk or of its permissions, not a bug.
_PHRASES = {
    errno.ENOSPC: "no space is left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "the operation is not permitted",
    errno.EIO: "the device reports an input/output error",
}
#: The same states as TensorFlow's C++ file system writes them in its errors' messages.
_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Operation not permitted": errno.EPERM,
    "Input/output error": errno.EIO,
}
_ADVICE = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.EFBIG: "raise the limit (ulimit -f) or choose another folder",
    errno.EROFS: "choose a folder you can write to",
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EIO: "check the disk, or choose a folder on another disk",
}


def disk_errno(error: BaseException) -> int | None:
    """The errno of a disk's state (full, read-only, forbidden) behind `error`, else None.

    Reads `OSError`s by their errno and TensorFlow's errors (`tf.errors.OpError`, which carry
    none) by the words of their message; follows `__cause__` and `__context__`.

    Example:
        >>> disk_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
        True
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _PHRASES:
            return error.errno
        if _is_tensorflow_error(error) or isinstance(error, OSError):
            message = str(getattr(error, "message", "") or error)
            for words, number in _MESSAGES.items():
                if words in message:
                    return number
        error = error.__cause__ or error.__context__
    return None


def _is_tensorflow_error(error: BaseException) -> bool:
    return any(
        cls.__name__ == "OpError" and cls.__module__.startswith("tensorflow")
        for cls in type(error).__mro__
    )


def disk_problem(error: BaseException) -> str | None:
    """`disk_errno(error)` as a phrase ("no space is left on the device"), else None.

    Example:
        >>> disk_problem(PermissionError(errno.EACCES, "Permission denied", "/data"))
        'permission is denied'
    """
    number = disk_errno(error)
    return None if number is None else _PHRASES[number]


class FileWriteError(OSError):
    """A file or folder could not be written because of the disk's state; its message names
    the path, the problem, what was kept or removed, and what to do.

    `errno` is the disk's (ENOSPC, EROFS, EACCES, ...) and `filename` the path.

    Example:
        >>> try:
        ...     atomic_save(model, "runs/pets/last.keras")
        ... except FileWriteError as error:
        ...     print(error)
        Could not write runs/pets/last.keras: no space is left on the device. The partial file
        was removed; the previous runs/pets/last.keras is left as it was. Free some space or
        choose a folder on another disk.
    """

    def __init__(self, number: int, message: str, path: str):
        super().__init__(number, message, path)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, error: BaseException, path: str, kept: str = "") -> FileWriteError:
        """The FileWriteError of writing `path` that failed with `error` (a disk's state).

        Args:
            error: the OSError or TensorFlow error raised by the write.
            path: the file or folder being written, as the user named it.
            kept: a sentence on what is left (e.g. "The partial file was removed.").

        Example:
            >>> FileWriteError.of(OSError(errno.EROFS, "Read-only file system"), "out/m.keras")
        """
        number = disk_errno(error) or errno.EIO
        sentences = [f"Could not write {path}: {_PHRASES[number]}."]
        if kept:
            sentences.append(kept.rstrip(".") + ".")
        advice = _ADVICE[number]
        sentences.append(advice[0].upper() + advice[1:] + ".")
        return cls(number, " ".join(sentences), path)


__all__ = ["FileWriteError", "disk_errno", "disk_problem"]
