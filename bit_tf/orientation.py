"""Photos upright: the EXIF orientation of an image file, read and applied with graph ops.

A camera stores a photo as its sensor saw it and records in the EXIF Orientation tag (TIFF tag
0x0112, values 1-8) how a viewer must turn it. Photo viewers, PIL's `ImageOps.exif_transpose`
(which `bit_tf.image_folder` uses) and this module apply it, so that training, `bit-predict`,
the `predict` helpers and the serving export read every photo the same way up.

The tag is read from the EXIF block of a JPEG (its APP1 segment), a PNG (an `eXIf` chunk
before the image data) or a WebP (its `EXIF` chunk), in either TIFF byte order. Files
without one (GIF, BMP, most PNGs), and blocks that are damaged (cut, wrong byte order mark,
offsets outside the block, a value outside 1-8), read as orientation 1: as stored. XMP
metadata is not read. Everything is a TensorFlow op: it runs in `tf.data` pipelines and in
exported SavedModels, on any device.

Example:
    >>> data = tf.io.read_file("phone_photo.jpg")
    >>> orientation = exif_orientation(data)          # e.g. 6: turn 90 degrees clockwise
    >>> upright = apply_orientation(tf.io.decode_jpeg(data, channels=3), orientation)
"""

from __future__ import annotations

import tensorflow as tf

from bit_tf.image_bytes import bytes_at, jpeg_segments, unsigned

#: The EXIF (TIFF) tag of the orientation.
ORIENTATION_TAG = 0x0112
#: Entries of the first image directory searched for the tag.
MAX_DIRECTORY_ENTRIES = 64
#: Chunks of a PNG or WebP file searched for the EXIF block.
MAX_CHUNKS = 64
_SHORT, _LONG = 3, 4  # the TIFF types of the tag's value (SHORT as the standard says; LONG seen)
# Per orientation 1-8, what turns the stored pixels upright, in this order: reverse the rows
# (top and bottom swap), reverse the columns (left and right swap), transpose.
_REVERSE_ROWS = (False, False, True, True, False, True, True, False)
_REVERSE_COLUMNS = (False, True, True, False, False, False, True, True)
_TRANSPOSE = (False, False, False, False, True, True, True, True)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _tiff_orientation(data: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """The orientation in the TIFF block of `data` from `start` to `end`, or 1."""
    header = bytes_at(data, start, 8)
    little = tf.equal(header[0], ord("I")) & tf.equal(header[1], ord("I"))
    big = tf.equal(header[0], ord("M")) & tf.equal(header[1], ord("M"))
    magic = tf.equal(unsigned(header, 2, 2, big), 42)
    directory = start + unsigned(header, 4, 4, big)
    count = unsigned(bytes_at(data, directory, 2), 0, 2, big)
    entries = tf.reshape(bytes_at(data, directory + 2, MAX_DIRECTORY_ENTRIES * 12), [-1, 12])
    index = tf.range(MAX_DIRECTORY_ENTRIES, dtype=tf.int64)
    inside = (index < count) & (directory + 2 + (index + 1) * 12 <= end)
    kind = unsigned(entries, 2, 2, big)
    matches = (
        inside
        & tf.equal(unsigned(entries, 0, 2, big), ORIENTATION_TAG)
        & (tf.equal(kind, _SHORT) | tf.equal(kind, _LONG))
    )
    values = tf.where(
        tf.equal(kind, _SHORT), unsigned(entries, 8, 2, big), unsigned(entries, 8, 4, big)
    )
    value = tf.gather(values, tf.argmax(tf.cast(matches, tf.int32)))
    known = (
        (start >= 0) & (little | big) & magic & tf.reduce_any(matches) & (value >= 1) & (value <= 8)
    )
    return tf.where(known, tf.cast(value, tf.int32), 1)


def _chunk_with(data, first: int, wanted: bytes, stop: bytes | None, name_first: bool):
    """(start, end) of the data of the first chunk named `wanted` of a PNG (length, name, data,
    CRC; big-endian) or WebP (name, length, data padded to even; little-endian) file, searched
    from `first` until a chunk named `stop` or the end; (-1, -1) where there is none."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    missing = tf.constant(-1, tf.int64)
    wanted_name = tf.constant(list(wanted), tf.int64)
    name_at, size_at = (0, 4) if name_first else (4, 0)
    big_endian = not name_first

    def not_done(step, position, found):
        return (position >= 0) & (found < 0)

    def step_over(step, position, found):
        head = bytes_at(data, position, 8)
        name = head[name_at : name_at + 4]
        size = unsigned(head, size_at, 4, big_endian)
        found = tf.where(tf.reduce_all(tf.equal(name, wanted_name)), position + 8, found)
        following = position + 8 + size + (size % 2 if name_first else 4)
        stopped = position + 8 > length
        if stop is not None:
            stopped |= tf.reduce_all(tf.equal(name, list(stop)))
        return step + 1, tf.where(stopped, missing, following), found

    _, _, found = tf.while_loop(
        not_done,
        step_over,
        (tf.constant(0, tf.int64), tf.constant(first, tf.int64), missing),
        maximum_iterations=MAX_CHUNKS,
    )
    size = unsigned(bytes_at(data, found - 8 + size_at, 4), 0, 4, big_endian)
    return found, tf.where(found >= 0, tf.minimum(found + size, length), missing)


def _without_exif_prefix(data, start):
    """`start`, after an "Exif\\0\\0" prefix if the block has one (some writers add it)."""
    prefix = tf.reduce_all(tf.equal(bytes_at(data, start, 6), list(b"Exif\0\0")))
    return tf.where(prefix & (start >= 0), start + 6, start)


def exif_orientation(data: tf.Tensor, exif_block: tuple | None = None) -> tf.Tensor:
    """The EXIF orientation (int32 scalar, 1-8) of the image file `data` (a scalar string);
    1 where the file has none or it cannot be read.

    Args:
        data: the bytes of a JPEG, PNG or WebP file (other files give 1).
        exif_block: for a JPEG already walked with `bit_tf.image_bytes.jpeg_segments`, its
            (exif_start, exif_end), so that the header is not walked twice.

    Example:
        >>> exif_orientation(tf.io.read_file("phone_photo.jpg")).numpy()
        6
        >>> exif_orientation(tf.constant(b"not an image")).numpy()
        1
    """
    data = tf.convert_to_tensor(data, tf.string)
    if exif_block is not None:
        return _tiff_orientation(data, *exif_block)
    head = tf.strings.substr(data, 0, 12)

    def jpeg():
        segments = jpeg_segments(data)
        return _tiff_orientation(data, segments.exif_start, segments.exif_end)

    def png():
        start, end = _chunk_with(data, 8, b"eXIf", stop=b"IDAT", name_first=False)
        return _tiff_orientation(data, _without_exif_prefix(data, start), end)

    def webp():
        start, end = _chunk_with(data, 12, b"EXIF", stop=None, name_first=True)
        return _tiff_orientation(data, _without_exif_prefix(data, start), end)

    is_jpeg = tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8")
    is_png = tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE)
    is_webp = tf.equal(tf.strings.substr(head, 0, 4), b"RIFF") & tf.equal(
        tf.strings.substr(tf.strings.join([head, b"\0" * 12]), 8, 4), b"WEBP"
    )
    kind = tf.where(is_jpeg, 0, tf.where(is_png, 1, tf.where(is_webp, 2, 3)))
    return tf.switch_case(kind, [jpeg, png, webp], default=lambda: tf.constant(1))


def _steps(orientation: tf.Tensor):
    index = tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8) - 1
    return tuple(tf.gather(table, index) for table in (_REVERSE_ROWS, _REVERSE_COLUMNS, _TRANSPOSE))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The image [height, width, channels] as a viewer shows it, for its EXIF `orientation`.

    Example:
        >>> stored = tf.io.decode_jpeg(data, channels=3)               # 3000 x 4000, sideways
        >>> apply_orientation(stored, exif_orientation(data)).shape     # orientation 6
        TensorShape([4000, 3000, 3])
    """
    reverse_rows, reverse_columns, transpose = _steps(orientation)
    image = tf.cond(reverse_rows, lambda: tf.reverse(image, [0]), lambda: image)
    image = tf.cond(reverse_columns, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)


def upright_shape(shape: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The [height, width, ...] shape of the upright image of a stored image of `shape`.

    Example:
        >>> upright_shape(tf.constant([3000, 4000, 3]), 6).numpy()
        array([4000, 3000,    3], dtype=int32)
    """
    shape = tf.convert_to_tensor(shape)
    _, _, transpose = _steps(orientation)
    swapped = tf.concat([tf.stack([shape[1], shape[0]]), shape[2:]], axis=0)
    return tf.where(transpose, swapped, shape)


def stored_window(
    begin: tf.Tensor, size: tf.Tensor, stored_shape: tf.Tensor, orientation: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The window of the stored image that holds the window (`begin`, `size`: [row, column, ...])
    of its upright image: crop it, then `apply_orientation`, for the upright crop.

    Example:
        >>> begin, size = stored_window([0, 0, 0], [100, 200, -1], [3000, 4000, 3], 6)
        >>> begin.numpy(), size.numpy()          # the upright top-left is the stored bottom-left
        (array([2800,    0,    0], dtype=int32), array([200, 100,  -1], dtype=int32))
    """
    begin, size = tf.convert_to_tensor(begin), tf.convert_to_tensor(size)
    stored_shape = tf.cast(stored_shape, begin.dtype)
    reverse_rows, reverse_columns, transpose = _steps(orientation)
    order = tf.where(transpose, [1, 0], [0, 1])
    row_begin, column_begin = tf.unstack(tf.gather(begin[:2], order))
    rows, columns = tf.unstack(tf.gather(size[:2], order))
    row_begin = tf.where(reverse_rows, stored_shape[0] - row_begin - rows, row_begin)
    column_begin = tf.where(reverse_columns, stored_shape[1] - column_begin - columns, column_begin)
    begin = tf.concat([tf.stack([row_begin, column_begin]), begin[2:]], axis=0)
    return begin, tf.concat([tf.stack([rows, columns]), size[2:]], axis=0)


__all__ = [
    "ORIENTATION_TAG",
    "apply_orientation",
    "exif_orientation",
    "stored_window",
    "upright_shape",
]
