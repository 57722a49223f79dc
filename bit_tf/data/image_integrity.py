"""Whether an image file is whole, decided from its structure without decoding its pixels.

A file cut short (an interrupted download or copy) is the commonest damage in a photo folder.
JPEG and PNG files say where they end: a JPEG's entropy-coded data is followed by the
end-of-image marker (FF D9), which cannot occur inside the coded data (an FF there is always
followed by 00 or a restart code); a PNG ends with its IEND chunk; a WebP file states its
length in its RIFF header. `truncation_problem` checks that mark, reading the last bytes of
the file in the common case, and the whole file only where something follows the image (phone
cameras append metadata or a short video after a JPEG's end marker, which is fine).

Damage inside the coded data (flipped bits) is not found here; the pipelines skip such a file
when its decoding fails (`bit_tf.data.image_folder.decode_for_pipeline`).

Example:
    >>> truncation_problem("photos/cat/1.jpg", "JPEG") is None
    True
    >>> truncation_problem("photos/cat/half.jpg", "JPEG")
    'truncated JPEG: no end-of-image marker'
"""

from __future__ import annotations

import os
import struct

JPEG_END = b"\xff\xd9"
JPEG_START_OF_SCAN = 0xDA
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# JPEG markers that stand alone, without a length: TEM, RST0-7, SOI, EOI.
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xDA)}


def truncation_problem(path: str, image_format: str | None) -> str | None:
    """None if `path` (of PIL format `image_format`) ends as a whole file of its format must;
    else what is wrong. Formats without an end mark pass.

    Example:
        >>> truncation_problem("scan.png", "PNG") is None
        True
    """
    with open(path, "rb") as file:
        if image_format == "JPEG":
            return _jpeg_problem(file)
        if image_format == "PNG":
            return _png_problem(file)
        if image_format == "WEBP":
            return _webp_problem(file)
    return None


def _tail(file, count: int) -> bytes:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - count))
    return file.read(count)


def _jpeg_problem(file) -> str | None:
    if _tail(file, 2) == JPEG_END:
        return None
    # Something follows the image, or the file is cut: read it whole (the rare case).
    file.seek(0)
    data = file.read()
    scan_start = _jpeg_scan_start(data)
    if scan_start is None:
        return "truncated JPEG: the file ends before its image data"
    if data.find(JPEG_END, scan_start) < 0:
        return "truncated JPEG: no end-of-image marker"
    return None


def _jpeg_scan_start(data: bytes) -> int | None:
    """The offset just after the first start-of-scan segment's header; None if the data ends
    before one."""
    position = 2  # after the start-of-image marker
    while True:
        position = data.find(b"\xff", position)
        if position < 0:
            return None
        while position + 1 < len(data) and data[position + 1] == 0xFF:  # fill bytes
            position += 1
        if position + 1 >= len(data):
            return None
        code = data[position + 1]
        position += 2
        if code in _STANDALONE_MARKERS or code == 0x00:
            continue
        if position + 2 > len(data):
            return None
        (length,) = struct.unpack(">H", data[position : position + 2])
        position += length
        if code == JPEG_START_OF_SCAN:
            return position if position <= len(data) else None


def _png_problem(file) -> str | None:
    if _tail(file, len(PNG_END)) == PNG_END:
        return None
    file.seek(8)
    if PNG_END not in file.read():
        return "truncated PNG: no IEND chunk"
    return None


def _webp_problem(file) -> str | None:
    header = file.read(12)
    size = file.seek(0, os.SEEK_END)
    if len(header) < 12:
        return "truncated WebP: no RIFF header"
    (declared,) = struct.unpack("<I", header[4:8])
    if size < declared + 8:
        return f"truncated WebP: {size} bytes, its header says {declared + 8}"
    return None


__all__ = ["truncation_problem"]
