"""Reading the headers of image files in graph ops: bytes at an offset, integers of either byte
order, and the marker segments of a JPEG file.

Everything here is a TensorFlow string or integer op (no Python, no NumPy at run time), so it
runs inside `tf.data` pipelines and exported SavedModels. Offsets may point anywhere, also past
the end of the file or before its start: such bytes read as zeros, so damaged headers give
values that the callers refuse, never an error.

`jpeg_segments` walks a JPEG's header from its start-of-image marker to its first scan, as a
decoder does, and says where its frame header and its first scan are, how many pixels the
frame declares, and whether the file is cut short; the serving export
(`hub_export.image_decoding`) uses it to flag cut files before its decoder sees (and logs) them.
It is a graph loop: cheap in a `tf.function`, costly once per file in a `tf.data` map, so it is
best kept to the files that need it (those that do not end with an end-of-image marker).

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
# Frame headers (SOF0-SOF15 but DHT 0xC4, JPG 0xC8 and DAC 0xCC), which hold the image's size.
_FRAME_MARKERS = tuple(kind for kind in range(0xC0, 0xD0) if kind not in (0xC4, 0xC8, 0xCC))


def bytes_at(data: tf.Tensor, position, count: int) -> tf.Tensor:
    """`count` bytes of each string of `data` (any shape) from its `position` (a number, or a
    tensor of `data`'s shape), as int64 [..., count]; bytes past the end of a string, or before
    its start, are zeros.

    Example:
        >>> bytes_at(tf.constant(b"\\x01\\x02\\x03"), 1, 4).numpy()
        array([2, 3, 0, 0])
        >>> bytes_at(tf.constant([b"ab", b"cde"]), tf.constant([0, 2], tf.int64), 2).numpy()
        array([[97, 98],
               [101, 0]])
    """
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)
    position = tf.broadcast_to(tf.cast(position, tf.int64), tf.shape(length))
    counts = tf.fill(tf.shape(length), tf.constant(count, tf.int64))
    piece = tf.strings.substr(data, tf.clip_by_value(position, 0, length), counts)
    padded = tf.strings.join([piece, b"\0" * count])
    values = tf.io.decode_raw(tf.strings.substr(padded, tf.zeros_like(counts), counts), tf.uint8)
    values = tf.reshape(tf.cast(values, tf.int64), tf.concat([tf.shape(length), [count]], 0))
    return tf.where(position[..., None] >= 0, values, tf.zeros_like(values))


def unsigned(values: tf.Tensor, start: int, count: int, big_endian) -> tf.Tensor:
    """The unsigned integers of `count` bytes of `values` (from `bytes_at`) at `start` along
    the last axis, in the byte order `big_endian` (a Python bool, or a bool tensor of the
    other axes' shape).

    Example:
        >>> unsigned(tf.constant([0, 1, 2], tf.int64), 1, 2, big_endian=True).numpy()
        258
    """
    digits = values[..., start : start + count]
    big = [256 ** (count - 1 - index) for index in range(count)]
    if isinstance(big_endian, bool):
        weights = big if big_endian else big[::-1]
        return tf.reduce_sum(digits * tf.constant(weights, values.dtype), axis=-1)
    both = tf.constant([big, big[::-1]], values.dtype)  # [byte order, digit]
    sums = tf.reduce_sum(digits[..., None, :] * both, axis=-1)
    return tf.where(big_endian, sums[..., 0], sums[..., 1])


class JpegSegments(NamedTuple):
    """What `jpeg_segments` found in a JPEG's header (int64 / bool scalars).

    Attributes:
        height, width: the frame header's size (0 without a frame header before the scan).
        scan_start: the offset of the first start-of-scan marker, or -1.
        truncated: the file is cut short: it ends inside its header, or no end-of-image
            marker follows its first scan. False where the walk stopped at bytes that are not
            a segment (a decoder may still read such a file, skipping stray bytes) or after
            `MAX_JPEG_SEGMENTS` segments.
    """

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
        >>> segments = jpeg_segments(tf.io.read_file("photo.jpg")[:5000])
        >>> int(segments.scan_start) > 0, bool(segments.truncated)
        (True, True)
    """
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)
    zero = tf.constant(0, tf.int64)
    missing = tf.constant(-1, tf.int64)
    start = bytes_at(data, zero, 2)
    is_jpeg = tf.equal(start[0], _MARKER) & tf.equal(start[1], 0xD8)
    frame_markers = tf.constant(_FRAME_MARKERS, tf.int64)

    def not_done(step, position, scan, *_):
        return (step < MAX_JPEG_SEGMENTS) & (position >= 0) & (scan < 0)

    def step_over(step, position, scan, height, width, cut):
        head = bytes_at(data, position, 10)
        kind = head[1]
        is_marker = tf.equal(head[0], _MARKER)
        fill = is_marker & tf.equal(kind, _MARKER)
        alone = is_marker & (((kind >= 0xD0) & (kind <= 0xD7)) | tf.equal(kind, 0x01))
        segment_length = unsigned(head, 2, 2, big_endian=True)
        segment_end = position + 2 + segment_length
        is_segment = is_marker & ~fill & ~alone & (segment_length >= 2)
        found_scan = is_segment & tf.equal(kind, _START_OF_SCAN)
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
        return step + 1, following, scan, height, width, cut

    first = tf.where(is_jpeg, tf.constant(2, tf.int64), missing)
    initial = (zero, first, missing, zero, zero, tf.constant(False))
    _, _, scan, height, width, cut = tf.while_loop(
        not_done, step_over, initial, maximum_iterations=MAX_JPEG_SEGMENTS
    )
    found_scan = scan >= 0
    no_end = tf.cond(
        found_scan, lambda: ~_has_end_after(data, scan, length), lambda: tf.constant(False)
    )
    return JpegSegments(height, width, scan, cut | no_end)


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
