"""What a file holds, judged by its first bytes (and a zip by its member names), not its name.

A download or a `--weights` file can hold something other than its name says: a login page
served in place of a checkpoint, a Keras model saved under an `.npz` name, a single `.npy`
array. `sniff` names the kind so that errors can say what the file is instead of what the
reader choked on ("pickled data", "not a zip file").

Example:
    >>> sniff("BiT-M-R50x1.npz")
    'npz'
    >>> describe(sniff("login.html"))
    'an HTML page'
"""

from __future__ import annotations

import zipfile

NPZ = "npz"
KERAS = "keras"
ZIP = "zip"
NPY = "npy"
GZIP = "gzip"
TAR = "tar"
HTML = "html"
PICKLE = "pickle"
TEXT = "text"
EMPTY = "empty"
OTHER = "other"

_DESCRIPTIONS = {
    NPZ: "an .npz archive of arrays",
    KERAS: "a Keras model file (.keras: a zip with config.json)",
    ZIP: "a zip archive that holds no .npy arrays",
    NPY: "a single .npy array, not an .npz archive of named arrays",
    GZIP: "a gzip file",
    TAR: "a tar archive",
    HTML: "an HTML page",
    PICKLE: "a Python pickle",
    TEXT: "a text file",
    EMPTY: "empty",
    OTHER: "of an unknown kind",
}
_SNIFF_BYTES = 512
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<meta", b"<script")


def describe(kind: str) -> str:
    """A kind as words: "an HTML page", "a Keras model file (.keras: ...)", ...

    Example:
        >>> describe("npy")
        'a single .npy array, not an .npz archive of named arrays'
    """
    return _DESCRIPTIONS[kind]


def looks_like_html(head: bytes) -> bool:
    """Whether the first bytes of a file or a response are those of an HTML page.

    Example:
        >>> looks_like_html(b"\\n<!DOCTYPE html><html><body>Sign in</body></html>")
        True
    """
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<?xml"):
        return b"<html" in text
    return text.startswith(_HTML_STARTS) or (text.startswith(b"<!--") and b"<html" in text)


def sniff(path: str) -> str:
    """The kind of the file at `path`: one of NPZ, KERAS, ZIP, NPY, GZIP, TAR, HTML, PICKLE,
    TEXT, EMPTY, OTHER. A zip whose member list cannot be read (cut short) counts as ZIP.

    Example:
        >>> sniff("model.keras")
        'keras'
    """
    with open(path, "rb") as stream:
        head = stream.read(_SNIFF_BYTES)
    if not head:
        return EMPTY
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(path)
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"\x1f\x8b"):
        return GZIP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    if looks_like_html(head):
        return HTML
    if head[:1] == b"\x80" and 2 <= head[1:2][0] <= 5:
        return PICKLE
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return OTHER
    return TEXT


def _zip_kind(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return ZIP
    if "config.json" in names and any(n in names for n in ("model.weights.h5", "metadata.json")):
        return KERAS
    if names and all(name.endswith(".npy") for name in names):
        return NPZ
    return ZIP


__all__ = ["describe", "looks_like_html", "sniff"]
