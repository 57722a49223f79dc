"""Fetching files into the Keras cache: retries with backoff, a temporary name, then a rename.

A download that fails or is cut never leaves a partial file where the cache expects a whole
one: bytes go to `<name>.partial-<random>` in the cache folder, the sha256 is checked when it is
known, and only then is the file renamed into place (an atomic rename on one file system). On a
terminal, a line shows the bytes received, the rate and the time left
(`bit_tf.download_progress`); elsewhere downloads are quiet.

Example:
    >>> from bit_tf.download import download
    >>> path = download("https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz")
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TextIO

from bit_tf.download_progress import DownloadProgress

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(OSError):
    """A file could not be downloaded; the message says from where and what to do instead."""


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


def sha256_of(path: str) -> str:
    """The hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TruncatedDownloadError(OSError):
    """The server sent fewer bytes than it announced."""


def _is_transient(error: Exception) -> bool:
    """Timeouts, resets, cut transfers and 5xx answers are worth a retry; the rest are not."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, socket.gaierror):
            return False  # no such host / no network: retrying will not help
        return isinstance(reason, (TimeoutError, ConnectionError, OSError))
    return isinstance(error, (TimeoutError, ConnectionError, TruncatedDownloadError))


def _fetch_once(url: str, partial_path: str, timeout: float, progress_stream) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        expected = response.headers.get("Content-Length")
        progress = DownloadProgress(
            os.path.basename(urllib.parse.urlparse(url).path) or url,
            int(expected) if expected is not None else None,
            progress_stream,
        )
        received = 0
        try:
            with open(partial_path, "wb") as handle:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        finally:
            progress.close()
    if expected is not None and received != int(expected):
        raise TruncatedDownloadError(f"received {received} of {expected} bytes")


def download(
    url: str,
    *,
    file_name: str | None = None,
    sha256: str | None = None,
    subdir: str = "bit_tf",
    retries: int = 3,
    backoff_seconds: float = 1.0,
    timeout: float = 60.0,
    progress_stream: TextIO | None = None,
) -> str:
    """Downloads `url` into the cache (or returns the cached copy) and returns its path.

    Args:
        url: an http(s) or file URL.
        file_name: the cached file's name; by default the URL's last path component.
        sha256: the expected hex digest; a mismatch is an error and nothing is cached.
        subdir: the folder under `$KERAS_HOME/models`.
        retries: extra attempts after transient failures (timeouts, resets, 5xx, cut transfers).
        backoff_seconds: the first wait between attempts; it doubles each time.
        timeout: seconds a connection may stay silent.
        progress_stream: where progress (bytes, rate, time left) is drawn when it is a
            terminal; None for sys.stderr. Nothing is drawn on a file or a pipe.

    Raises:
        DownloadError: naming the URL, the reason, and how to pass a local file instead.

    Example:
        >>> download("http://127.0.0.1:8000/BiT-M-R50x1.npz", sha256=None)
    """
    file_name = file_name or os.path.basename(urllib.parse.urlparse(url).path) or "download"
    folder = cache_dir(subdir)
    target = os.path.join(folder, file_name)
    if os.path.exists(target):
        if sha256 is None or sha256_of(target) == sha256:
            return target
        log.warning("Cached %s does not match its sha256; downloading it again.", target)

    attempt = 0
    while True:
        handle, partial_path = tempfile.mkstemp(prefix=f"{file_name}.partial-", dir=folder)
        os.close(handle)
        try:
            log.info("Downloading %s to %s", url, target)
            _fetch_once(url, partial_path, timeout, progress_stream or sys.stderr)
            if sha256 is not None:
                actual = sha256_of(partial_path)
                if actual != sha256:
                    raise DownloadError(
                        f"Downloaded {url} but its sha256 is {actual}, expected {sha256}: the "
                        "file is damaged or not the one asked for. Nothing was cached."
                    )
            os.replace(partial_path, target)
            return target
        except DownloadError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as error:
            if attempt < retries and _is_transient(error):
                wait = backoff_seconds * 2**attempt
                log.warning("Download of %s failed (%s); retrying in %.1f s.", url, error, wait)
                time.sleep(wait)
                attempt += 1
                continue
            raise DownloadError(
                f"Could not download {url} ({error}). Without network access, fetch the file "
                f"elsewhere and pass its local path instead (for example "
                f"weights='/path/to/{file_name}'), or copy it to {target}."
            ) from error
        finally:
            if os.path.exists(partial_path):
                os.remove(partial_path)
