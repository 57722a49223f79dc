"""Reading the headers of image files in graph ops: bytes at an offset, integers of either byte
order, and the marker segments of a JPEG file.

Everything here is a TensorFlow string or integer op (no Python, no NumPy at run time), so it
runs inside `tf.data` pipelines and exported SavedModels. Offsets may point anywhere, also past
the end of the file or before its start: such bytes read as zeros, so damaged headers give
values that the callers refuse, never an error.

`jpeg_segments` walks a JPEG's header from its start-of-image marker to its first scan, as a
decoder does, and says where its EXIF block, its frame header and its first scan are, and how
many pixels the frame declares; `bit_tf.orientation` reads the EXIF block, and the serving
export (`hub_export.serving`) finds cut files before its decoder sees them.

Example:
    >>> segments = jpeg_segments(tf.io.read_file("photo.jpg"))
    >>> segments.height.numpy(), segments.width.numpy(), segments.truncated.numpy()
    (3000, 4000, False)
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

#: How many segments `jpeg_segments` reads before giving up on finding the first scan.
MAX_JPEG_SEGMENTS = 256
_MARKER = 0xFF
_START_OF_SCAN = 0xDA
_END_OF_IMAGE = 0xD9
_APP1 = 0xE1
_EXIF_PREFIX = b"Exif\0\0"
# Frame headers (SOF0-SOF15 but DHT 0xC4, JPG 0xC8 and DAC 0xCC), which hold the image's size.
_FRAME_MARKERS = tuple(kind for kind in range(0xC0, 0xD0) if kind not in (0xC4, 0xC8, 0xCC))


def bytes_at(data: tf.Tensor, position: tf.Tensor, count: int) -> tf.Tensor:
    """`count` bytes of the scalar string `data` from `position`, as int64 [count]; bytes past
    the end of `data`, or before its start, are zeros.

    Example:
        >>> bytes_at(tf.constant(b"\\x01\\x02\\x03"), tf.constant(1, tf.int64), 4).numpy()
        array([2, 3, 0, 0])
    """
    position = tf.cast(position, tf.int64)
    length = tf.cast(tf.strings.length(data), tf.int64)
    piece = tf.strings.substr(data, tf.clip_by_value(position, 0, length), count)
    padded = tf.strings.join([piece, tf.constant(b"\0" * count)])
    values = tf.io.decode_raw(tf.strings.substr(padded, 0, count), tf.uint8)
    values = tf.reshape(tf.cast(values, tf.int64), [count])
    return tf.where(position >= 0, values, tf.zeros_like(values))


def unsigned(values: tf.Tensor, start: int, count: int, big_endian) -> tf.Tensor:
    """The unsigned integer of `count` bytes of `values` (from `bytes_at`) at `start`, in the
    byte order `big_endian` (a Python or tensor bool); along the last axis.

    Example:
        >>> unsigned(tf.constant([0, 1, 2], tf.int64), 1, 2, big_endian=True).numpy()
        258
    """
    digits = [values[..., start + index] for index in range(count)]
    big = sum(digit * 256 ** (count - 1 - index) for index, digit in enumerate(digits))
    little = sum(digit * 256**index for index, digit in enumerate(digits))
    if isinstance(big_endian, bool):
        return big if big_endian else little
    return tf.where(big_endian, big, little)


class JpegSegments(NamedTuple):
    """What `jpeg_segments` found in a JPEG's header (int64 / bool scalars).

    Attributes:
        exif_start: the offset of the EXIF block's TIFF header (after "Exif\\0\\0" in the
            first APP1 segment that holds one), or -1.
        exif_end: the offset where that APP1 segment ends, or -1.
        height, width: the frame header's size (0 without a frame header before the scan).
        scan_start: the offset of the first start-of-scan marker, or -1.
        truncated: the file is cut short: it ends inside its header, or no end-of-image
            marker follows its first scan. False where the walk stopped at bytes that are not
            a segment (a decoder may still read such a file, skipping stray bytes) or after
            `MAX_JPEG_SEGMENTS` segments.
    """

    exif_start: tf.Tensor
    exif_end: tf.Tensor
    height: tf.Tensor
    width: tf.Tensor
    scan_start: tf.Tensor
    truncated: tf.Tensor


def jpeg_segments(data: tf.Tensor) -> JpegSegments:
    """Walks the marker segments of the JPEG file `data` (a scalar string) up to its first scan.

    Segments are followed by their declared lengths from the start-of-image marker; fill bytes
    and stand-alone markers are stepped over. Bytes that are not a JPEG give nothing found (and
    `truncated` false).

    Example:
        >>> segments = jpeg_segments(tf.io.read_file("photo.jpg"))
        >>> int(segments.exif_start) > 0, bool(segments.truncated)
        (True, False)
    """
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)
    zero = tf.constant(0, tf.int64)
    missing = tf.constant(-1, tf.int64)
    start = bytes_at(data, zero, 2)
    is_jpeg = tf.equal(start[0], _MARKER) & tf.equal(start[1], 0xD8)
    exif_prefix = tf.constant(list(_EXIF_PREFIX), tf.int64)
    frame_markers = tf.constant(_FRAME_MARKERS, tf.int64)

    def not_done(step, position, scan, *_):
        return (step < MAX_JPEG_SEGMENTS) & (position >= 0) & (scan < 0)

    def step_over(step, position, scan, exif_start, exif_end, height, width, cut):
        head = bytes_at(data, position, 10)
        kind = head[1]
        is_marker = tf.equal(head[0], _MARKER)
        fill = is_marker & tf.equal(kind, _MARKER)
        alone = is_marker & (((kind >= 0xD0) & (kind <= 0xD7)) | tf.equal(kind, 0x01))
        segment_length = unsigned(head, 2, 2, big_endian=True)
        segment_end = position + 2 + segment_length
        is_segment = is_marker & ~fill & ~alone & (segment_length >= 2)
        found_scan = is_segment & tf.equal(kind, _START_OF_SCAN)
        found_exif = (
            is_segment
            & tf.equal(kind, _APP1)
            & (exif_start < 0)
            & tf.reduce_all(tf.equal(head[4:10], exif_prefix))
        )
        exif_start = tf.where(found_exif, position + 10, exif_start)
        exif_end = tf.where(found_exif, tf.minimum(segment_end, length), exif_end)
        found_frame = is_segment & tf.reduce_any(tf.equal(kind, frame_markers)) & (height == 0)
        height = tf.where(found_frame, unsigned(head, 5, 2, big_endian=True), height)
        width = tf.where(found_frame, unsigned(head, 7, 2, big_endian=True), width)
        scan = tf.where(found_scan, position, scan)
        # Fewer than 4 bytes left before the first scan: a whole file has a scan and an end.
        off_the_end = position + 4 > length
        cut |= off_the_end
        broken = ~(is_segment | fill | alone)
        following = tf.where(fill, position + 1, tf.where(alone, position + 2, segment_end))
        following = tf.where(broken | off_the_end | found_scan, missing, following)
        return step + 1, following, scan, exif_start, exif_end, height, width, cut

    first = tf.where(is_jpeg, tf.constant(2, tf.int64), missing)
    initial = (zero, first, missing, missing, missing, zero, zero, tf.constant(False))
    _, _, scan, exif_start, exif_end, height, width, cut = tf.while_loop(
        not_done, step_over, initial, maximum_iterations=MAX_JPEG_SEGMENTS
    )
    found_scan = scan >= 0
    no_end = tf.cond(
        found_scan, lambda: ~_has_end_after(data, scan, length), lambda: tf.constant(False)
    )
    return JpegSegments(exif_start, exif_end, height, width, scan, cut | no_end)


def _has_end_after(data: tf.Tensor, position: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Whether an end-of-image marker (FF D9) follows `position`: the last two bytes (almost
    always), else anywhere after it (a file with data appended, as motion photos have)."""
    end_marker = bytes([_MARKER, _END_OF_IMAGE])
    ends = tf.equal(tf.strings.substr(data, tf.maximum(length - 2, 0), 2), end_marker)

    def search():
        rest = tf.strings.substr(data, position, length - position)
        return tf.size(tf.strings.split(rest, sep=end_marker)) > 1

    return tf.cond(ends, lambda: tf.constant(True), search)


__all__ = ["MAX_JPEG_SEGMENTS", "JpegSegments", "bytes_at", "jpeg_segments", "unsigned"]
