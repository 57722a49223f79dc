"""Caching the encoded bytes of images (never decoded pixels), in memory or on a local disk.

A pipeline reads each image file (or TFDS record) again every epoch. A cache keeps the bytes
as they are on disk, a few KB to a few MB per photo, so that a folder on a slow or network
disk is read once; the pixels are decoded again every epoch, after the shuffle. What may be
cached is a `CachePolicy`, made from the `cache` argument of the pipelines:

- "auto" (the default): in memory when all the encoded bytes fit `CACHE_BYTES`, else nothing;
- "memory": in memory up to `CACHE_BYTES` (a folder's files as they are first read; a TFDS
  source's records all together, or none where they are more);
- "none" (or False): nothing;
- any other string: a folder on a local disk, without a limit (the folder is created; files
  cached there by an earlier run of the same source are read from it).

`FileBytesCache` is the cache of an image folder, filled as files are read.

Example:
    >>> policy = CachePolicy.parse("auto")
    >>> cache = FileBytesCache.for_files(policy, total_bytes=48_000_000)
    >>> data = cache.read("photos/cat/1.jpg")   # from the file, then from memory
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading

from bit_tf.training.atomic import write_bytes

log = logging.getLogger(__name__)

#: The most encoded bytes a pipeline keeps in memory.
CACHE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """Where encoded bytes may be cached: `kind` "auto", "memory", "none" or "disk" (then
    `folder`), and the memory `budget` in bytes.

    Example:
        >>> CachePolicy.parse("/mnt/ssd/cache")
        CachePolicy(kind='disk', folder='/mnt/ssd/cache', budget=1073741824)
    """

    kind: str
    folder: str | None = None
    budget: int = CACHE_BYTES

    @classmethod
    def parse(cls, cache: bool | str | CachePolicy | None) -> CachePolicy:
        """The policy of a pipeline's `cache` argument (see the module's docstring).

        Raises:
            ValueError: an empty string or another type.

        Example:
            >>> CachePolicy.parse(False).kind
            'none'
        """
        if isinstance(cache, CachePolicy):
            return cache
        if cache is None or cache is False:
            return cls("none")
        if cache is True:
            return cls("memory")
        if not isinstance(cache, str) or not cache:
            raise ValueError(
                f"cache must be 'auto', 'memory', 'none' or a folder on a local disk, got "
                f"{cache!r}."
            )
        if cache in ("auto", "memory", "none"):
            return cls(cache)
        return cls("disk", folder=os.path.abspath(cache))

    def in_memory(self, total_bytes: int | None) -> bool:
        """Whether encoded bytes of `total_bytes` (None: unknown) are kept in memory.

        Example:
            >>> CachePolicy.parse("auto").in_memory(2 << 30)
            False
        """
        if self.kind == "memory":
            return True
        return self.kind == "auto" and total_bytes is not None and total_bytes <= self.budget


class FileBytesCache:
    """The bytes of files read so far, in memory up to a budget or in a local folder.

    Thread-safe: the pipelines read files in parallel.

    Example:
        >>> cache = FileBytesCache(budget=1 << 30)
        >>> cache.read("photos/cat/1.jpg") == open("photos/cat/1.jpg", "rb").read()
        True
    """

    def __init__(self, budget: int = 0, folder: str | None = None):
        self.budget = int(budget)
        self.folder = folder
        self.cached_bytes = 0
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if folder:
            os.makedirs(folder, exist_ok=True)

    @classmethod
    def for_files(cls, policy: CachePolicy, total_bytes: int, what: str = "") -> FileBytesCache:
        """The cache `policy` allows for files of `total_bytes` in all; says so in the log.

        Example:
            >>> FileBytesCache.for_files(CachePolicy.parse("none"), 10_000).budget
            0
        """
        if policy.kind == "disk":
            log.info("Caching the encoded images of %s in %s.", what, policy.folder)
            return cls(folder=policy.folder)
        if policy.in_memory(total_bytes):
            log.info(
                "Caching the encoded images of %s in memory (%.1f MB of files, limit %.1f MB); "
                "decoded images are never cached.",
                what,
                total_bytes / 1e6,
                policy.budget / 1e6,
            )
            return cls(budget=policy.budget)
        if policy.kind == "auto":
            log.info(
                "Not caching the images of %s: %.1f MB of files is more than the %.1f MB "
                "limit (cache=<folder on a local disk> caches them there).",
                what,
                total_bytes / 1e6,
                policy.budget / 1e6,
            )
        return cls()

    def _disk_path(self, path: str) -> str:
        """The copy's name: a digest of the file's path, size and modification time, so that a
        changed file is read again."""
        status = os.stat(path)
        key = f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}"
        return os.path.join(self.folder, hashlib.sha256(key.encode()).hexdigest()[:32])

    def read(self, path: str) -> bytes:
        """The bytes of the file at `path`, from the cache when it holds them.

        Raises:
            OSError: the file cannot be read (and is not cached).

        Example:
            >>> len(cache.read("photos/cat/1.jpg"))
            48213
        """
        if self.folder:
            return self._read_through_folder(path)
        cached = self._memory.get(path)
        if cached is not None:
            return cached
        with open(path, "rb") as file:
            data = file.read()
        if self.budget:
            with self._lock:
                if path not in self._memory and self.cached_bytes + len(data) <= self.budget:
                    self._memory[path] = data
                    self.cached_bytes += len(data)
        return data

    def _read_through_folder(self, path: str) -> bytes:
        copy = self._disk_path(path)
        try:
            with open(copy, "rb") as file:
                return file.read()
        except FileNotFoundError:
            pass
        with open(path, "rb") as file:
            data = file.read()
        write_bytes(copy, data, durable=False)  # a cache: a crash may lose it
        return data


__all__ = ["CACHE_BYTES", "CachePolicy", "FileBytesCache"]
