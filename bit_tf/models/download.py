"""Fetching files into the Keras cache: keyed by their whole URL, cached only when whole and
readable as what they claim to be, and checked against the SHA-256 of their first download on
every later use.

- **Key**: a URL's file goes to `<cache>/<first 16 hex digits of the URL's sha256>/<file name>`,
  so two URLs ending in the same file name are two files; a caller may name the file itself
  (`file_name=`, as released checkpoints of the authors' bucket are: one URL per name).
- **Whole**: bytes go to `<name>.partial-<random>` beside the target; the transfer must deliver
  the announced `Content-Length`, and the file must read as its suffix says (`.npz`: a zip of
  `.npy` arrays whose sizes match their headers; `.tar.gz`: a gzip tar read to its end). An HTML
  page in place of the file is named as such; a cut transfer is retried. The caller's `verify`
  (e.g. a released checkpoint's architecture) runs before the file is renamed into place, so
  the cache never holds a partial or refused file.
- **Recorded**: the SHA-256 of what was downloaded goes beside it (`<name>.sha256`, in
  `sha256sum` format) and every later use compares the file with it: a file changed since is
  named and downloaded again, once; a server that now sends other bytes than the first time is
  refused. A cached file from before this record existed is checked like a new download and
  adopted, or downloaded again when it does not read.
- **Stalls**: a connection silent for `timeout` seconds fails and is retried; a transfer that
  delivers fewer than `min_bytes_per_window` bytes in any `stall_seconds` window (by default
  64 KiB a minute: a server trickling a byte every few seconds) fails at once.
- **Interruption**: Ctrl-C (KeyboardInterrupt) stops a transfer or a wait between attempts at
  once and removes the partial file.

On a terminal, a line shows the bytes received, the rate and the time left
(`bit_tf.models.download_progress`); elsewhere downloads are quiet.

Example:
    >>> from bit_tf.models.download import download
    >>> path = download("https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz")
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from typing import TextIO

from bit_tf.models import file_kinds
from bit_tf.models.download_progress import DownloadProgress
from bit_tf.models.npz_file import READ_ERRORS, NpzError, NpzFile
from bit_tf.training.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
RECORD_SUFFIX = ".sha256"
#: Hex digits of the URL's sha256 that name its cache folder.
URL_KEY_DIGITS = 16


class DownloadError(OSError):
    """A file could not be downloaded; the message says from where and what to do instead."""


class TruncatedDownloadError(OSError):
    """The server sent fewer bytes than it announced, or a file that ends before it should."""


class StalledDownloadError(OSError):
    """The transfer delivered too few bytes for too long."""


def cache_dir(subdir: str = "bit_tf") -> str:
    """The folder downloads are cached in: `$KERAS_HOME/models/<subdir>` (default ~/.keras).

    Example:
        >>> cache_dir()
        '/home/me/.keras/models/bit_tf'
    """
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(keras_home, "models", subdir)
    try:
        os.makedirs(path, exist_ok=True)
    except PermissionError:  # a read-only home: Keras falls back to the temp folder too
        path = os.path.join(tempfile.gettempdir(), ".keras", "models", subdir)
        os.makedirs(path, exist_ok=True)
    return path


def cache_path(url: str, file_name: str | None = None, subdir: str = "bit_tf") -> str:
    """Where `download(url, file_name=file_name)` keeps its file.

    Example:
        >>> cache_path("http://host-a/w.npz")
        '/home/me/.keras/models/bit_tf/5e1a4c0f2b7d9e36/w.npz'
        >>> cache_path("http://host-b/x/w.npz") != cache_path("http://host-a/w.npz")
        True
    """
    folder = cache_dir(subdir)
    if file_name is not None:
        return os.path.join(folder, file_name)
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:URL_KEY_DIGITS]
    return os.path.join(folder, key, name)


def sha256_of(path: str) -> str:
    """The hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: str) -> str | None:
    """The sha256 recorded beside a cached file at its download, or None.

    Example:
        >>> recorded_sha256(download("http://127.0.0.1:8000/w.npz"))
        '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    try:
        with open(path + RECORD_SUFFIX) as handle:
            fields = handle.read(200).split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    digest = fields[0].lower() if fields else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def _write_record(path: str, digest: str) -> None:
    write_text(path + RECORD_SUFFIX, f"{digest}  {os.path.basename(path)}\n")


def _is_transient(error: Exception) -> bool:
    """Timeouts, resets, cut transfers and 5xx answers are worth a retry; the rest are not."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, socket.gaierror):
            return False  # no such host / no network: retrying will not help
        return isinstance(reason, (TimeoutError, ConnectionError, OSError))
    if isinstance(error, StalledDownloadError):
        return False  # a server that trickles will trickle again
    return isinstance(error, (TimeoutError, ConnectionError, TruncatedDownloadError))


def _fetch_once(
    url: str,
    partial_path: str,
    timeout: float,
    stall_seconds: float,
    min_bytes_per_window: int,
    progress_stream,
) -> str:
    """Writes the body of `url` to `partial_path`; returns the response's Content-Type."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        expected = response.headers.get("Content-Length")
        content_type = response.headers.get("Content-Type") or ""
        progress = DownloadProgress(
            os.path.basename(urllib.parse.urlparse(url).path) or url,
            int(expected) if expected is not None else None,
            progress_stream,
        )
        received = 0
        window_start, window_bytes = time.monotonic(), 0
        try:
            with open(partial_path, "wb") as handle:
                # read1 returns what has arrived, so that a slow server is seen between bytes.
                for chunk in iter(lambda: response.read1(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
                    window_bytes += len(chunk)
                    now = time.monotonic()
                    if now - window_start >= stall_seconds:
                        if window_bytes < min_bytes_per_window:
                            raise StalledDownloadError(
                                f"it stalled: {window_bytes} bytes in the last "
                                f"{now - window_start:.0f} s, {received} in all"
                            )
                        window_start, window_bytes = now, 0
        finally:
            progress.close()
    if expected is not None and received != int(expected):
        raise TruncatedDownloadError(f"received {received} of {expected} bytes")
    return content_type


def _expected_kind(file_name: str) -> str | None:
    name = file_name.lower()
    if name.endswith(".npz"):
        return "a checkpoint (.npz)"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "an archive (.tar.gz)"
    if name.endswith(".keras"):
        return "a Keras model (.keras)"
    return None


def check_whole(path: str, file_name: str, content_type: str = "") -> None:
    """Checks that a downloaded file is whole and is what its name says.

    Raises:
        DownloadError: it is an HTML page, or another kind of file than its suffix says.
        TruncatedDownloadError: it is of the right kind but ends before it should.

    Example:
        >>> check_whole("/tmp/BiT-M-R50x1.npz.partial-x", "BiT-M-R50x1.npz")
    """
    expected = _expected_kind(file_name) or "the file asked for"
    is_html_name = file_name.lower().endswith((".html", ".htm"))
    kind = file_kinds.sniff(path)
    if not is_html_name and (kind == file_kinds.HTML or content_type.startswith("text/html")):
        raise DownloadError(
            f"the server sent an HTML page (a login or error page?), not {expected}"
        )
    name = file_name.lower()
    if name.endswith(".npz"):
        if kind not in (file_kinds.NPZ, file_kinds.ZIP):
            raise DownloadError(f"the server sent {file_kinds.describe(kind)}, not {expected}")
        try:
            NpzFile(path).close()
        except NpzError as error:
            raise DownloadError(f"the file is not {expected}: it {error}") from None
        except READ_ERRORS as error:
            raise TruncatedDownloadError(
                f"the file is not a whole .npz archive ({type(error).__name__}: {error})"
            ) from None
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        if name.endswith((".gz", ".tgz")) and kind != file_kinds.GZIP:
            raise DownloadError(f"the server sent {file_kinds.describe(kind)}, not {expected}")
        try:
            with tarfile.open(path, "r|*") as archive:
                for _ in archive:  # reads (and decompresses) to the end
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
            raise TruncatedDownloadError(
                f"the file is not a whole tar archive ({type(error).__name__}: {error})"
            ) from None
    elif name.endswith(".keras") and kind != file_kinds.KERAS:
        raise DownloadError(f"the server sent {file_kinds.describe(kind)}, not {expected}")


def download(
    url: str,
    *,
    file_name: str | None = None,
    sha256: str | None = None,
    subdir: str = "bit_tf",
    retries: int = 3,
    backoff_seconds: float = 1.0,
    timeout: float = 30.0,
    stall_seconds: float = 60.0,
    min_bytes_per_window: int = 64 * 1024,
    verify: Callable[[str], None] | None = None,
    progress_stream: TextIO | None = None,
) -> str:
    """Downloads `url` into the cache (or returns the cached copy) and returns its path.

    Args:
        url: an http(s) or file URL.
        file_name: the cached file's name directly in the cache folder, for a caller whose
            name stands for exactly one URL; by default the file goes to a folder named after
            the whole URL (`cache_path`).
        sha256: the expected hex digest, where the publisher gives one; a mismatch is an error
            and nothing is cached.
        subdir: the folder under `$KERAS_HOME/models`.
        retries: extra attempts after transient failures (silence, resets, 5xx, cut transfers).
        backoff_seconds: the first wait between attempts; it doubles each time.
        timeout: seconds a connection may stay silent (to connect, or between bytes).
        stall_seconds, min_bytes_per_window: a transfer that receives fewer than
            `min_bytes_per_window` bytes in any window of `stall_seconds` seconds fails.
        verify: called with the path of a new download before it enters the cache (and of a
            cached file without a sha256 record before it is adopted); it raises to refuse
            the file, which is then not cached.
        progress_stream: where progress (bytes, rate, time left) is drawn when it is a
            terminal; None for sys.stderr. Nothing is drawn on a file or a pipe.

    Raises:
        DownloadError: naming the URL, the reason, and how to pass a local file instead; or
            a server that now sends a file other than the one first downloaded from it.
        KeyboardInterrupt: on Ctrl-C, at once, with the partial file removed.
        Whatever `verify` raises.

    Example:
        >>> download("http://127.0.0.1:8000/BiT-M-R50x1.npz", sha256=None)
    """
    target = cache_path(url, file_name, subdir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    file_name = os.path.basename(target)
    # A published sha256 is the reference where there is one; else the first download's.
    recorded = recorded_sha256(target) if sha256 is None else None
    if os.path.exists(target):
        problem = _cached_file_problem(target, file_name, sha256, recorded, verify)
        if problem is None:
            return target
        log.warning("Cached %s %s; downloading it again.", target, problem)

    path = _fetch_into_cache(
        url,
        target,
        retries=retries,
        backoff_seconds=backoff_seconds,
        timeout=timeout,
        stall_seconds=stall_seconds,
        min_bytes_per_window=min_bytes_per_window,
        sha256=sha256,
        recorded=recorded,
        verify=verify,
        progress_stream=progress_stream or sys.stderr,
    )
    return path


def _cached_file_problem(target, file_name, sha256, recorded, verify) -> str | None:
    """Why the cached file cannot be used (a phrase), or None when it can."""
    if sha256 is not None or recorded is not None:
        actual = sha256_of(target)
        if sha256 is not None and actual != sha256:
            return f"does not match its published sha256 ({actual}, expected {sha256})"
        if recorded is not None and actual != recorded:
            return (
                f"has changed since it was downloaded (its sha256 is {actual}, the download's "
                f"was {recorded})"
            )
        if recorded is None:
            _write_record(target, actual)
        return None
    # Cached before downloads were recorded: check it as a new download, then record it.
    try:
        check_whole(target, file_name)
        if verify is not None:
            verify(target)
    except (OSError, ValueError) as error:
        return f"cannot be used ({error})"
    _write_record(target, sha256_of(target))
    log.info("Cached %s checked; its sha256 is now recorded beside it.", target)
    return None


class _TransientError(Exception):
    """An attempt failed in a way worth another (`error`); its partial file is removed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _fetch_into_cache(url, target, *, retries, backoff_seconds, sha256, recorded, verify, **fetch):
    """Downloads `url` to a temporary sibling of `target`, checks it and renames it onto
    `target` (`bit_tf.training.atomic`), retrying transient failures; returns `target`."""
    attempt = 0
    while True:
        try:
            with atomic_path(target, overwrite=True, what="Download") as partial_path:
                actual = _fetch_and_check(url, target, partial_path, attempt < retries, **fetch)
                _check_digest(url, target, actual, sha256, recorded)
                if verify is not None:
                    verify(partial_path)
        except _TransientError as failure:
            wait = backoff_seconds * 2**attempt
            log.warning("Download of %s failed (%s); retrying in %.1f s.", url, failure, wait)
            time.sleep(wait)
            attempt += 1
            continue
        _write_record(target, actual)
        return target


def _fetch_and_check(url, target, partial_path, may_retry: bool, **fetch) -> str:
    """Fetches `url` into `partial_path` and checks it is whole; returns its sha256. A
    transient failure is raised as `_TransientError` while `may_retry`."""
    file_name = os.path.basename(target)
    try:
        log.info("Downloading %s to %s", url, target)
        content_type = _fetch_once(url, partial_path, **fetch)
        check_whole(partial_path, file_name, content_type)
    except DownloadError as error:
        raise DownloadError(f"Could not use {url}: {error}. Nothing was cached.") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        if may_retry and _is_transient(error):
            raise _TransientError(error) from error
        raise DownloadError(
            f"Could not download {url} ({error}). Fetch the file another way (without "
            f"network access: elsewhere) and pass its local path instead (for example "
            f"weights='/path/to/{file_name}'), or copy it to {target}."
        ) from error
    return sha256_of(partial_path)


def _check_digest(url, target, actual: str, sha256: str | None, recorded: str | None) -> None:
    """Raises DownloadError where the download's sha256 is not the published or first one."""
    if sha256 is not None and actual != sha256:
        raise DownloadError(
            f"Downloaded {url} but its sha256 is {actual}, expected {sha256}: the "
            "file is damaged or not the one asked for. Nothing was cached."
        )
    if recorded is not None and actual != recorded:
        raise DownloadError(
            f"{url} now sends a file whose sha256 is {actual}, but its first download "
            f"had {recorded} ({target}{RECORD_SUFFIX}): the file on the server has "
            f"changed. If you trust the new file, delete {target}{RECORD_SUFFIX} and "
            "run again."
        )
