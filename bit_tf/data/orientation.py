"""Photos upright: the EXIF orientation of image files, read and applied with graph ops.

A camera stores a photo as its sensor saw it and records in the EXIF Orientation tag (TIFF tag
0x0112, values 1-8) how a viewer must turn it. Photo viewers, PIL's `ImageOps.exif_transpose`
(which `bit_tf.data.image_folder` uses) and this module apply it, so that training, `bit-predict`,
the `predict` helpers and the serving export read every photo the same way up.

`exif_orientation` reads the tag from the EXIF block of a JPEG (an APP1 segment), a PNG (an
`eXIf` chunk) or a WebP (an `EXIF` chunk), in either TIFF byte order, where cameras and photo
tools write it (see there). Files without one (GIF, BMP, most PNGs), and blocks that are damaged
(cut, a wrong byte order mark, offsets outside the block, a value outside 1-8), read as
orientation 1: as stored, as PIL reads them. XMP metadata is not read. Everything is a
TensorFlow op, without graph loops, elementwise over a batch of files: it runs in `tf.data`
pipelines and in exported SavedModels, on any device, and costs least when given a batch of
files at once (a `tf.data` map runs its ops once per file).

Example:
    >>> data = tf.io.read_file("phone_photo.jpg")
    >>> orientation = exif_orientation(data)          # e.g. 6: turn 90 degrees clockwise
    >>> upright = apply_orientation(tf.io.decode_jpeg(data, channels=3), orientation)
"""

from __future__ import annotations

import tensorflow as tf

from bit_tf.data.image_bytes import bytes_at, unsigned

#: The EXIF (TIFF) tag of the orientation.
ORIENTATION_TAG = 0x0112
#: The start of a JPEG or PNG file that is searched for its EXIF block.
HEAD_BYTES = 4096
#: How many marker segments of a JPEG, or chunks of a PNG, from its start may hold the block.
SEGMENTS_SEARCHED = 4
#: Entries of the first image directory searched for the tag.
MAX_DIRECTORY_ENTRIES = 64
#: Chunks of a WebP file searched for its EXIF chunk.
MAX_WEBP_CHUNKS = 6
_SHORT, _LONG = 3, 4  # the TIFF types of the tag's value (SHORT as the standard says; LONG seen)
# Per orientation 1-8, what turns the stored pixels upright, in this order: reverse the rows
# (top and bottom swap), reverse the columns (left and right swap), transpose.
_REVERSE_ROWS = (False, False, True, True, False, True, True, False)
_REVERSE_COLUMNS = (False, True, True, False, False, False, True, True)
_TRANSPOSE = (False, False, False, False, True, True, True, True)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_PREFIX = b"Exif\0\0"
_WEBP_EXIF_FLAG = 0x08  # in the flags byte of a VP8X chunk
_MISSING = -1


def _first_found(found: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """Along the last axis: the value where `found` is first true, or -1 where it never is."""
    first = tf.argmax(tf.cast(found, tf.int32), axis=-1)
    value = tf.gather(values, first, batch_dims=found.shape.rank - 1)
    return tf.where(tf.reduce_any(found, axis=-1), value, tf.constant(_MISSING, values.dtype))


def _tiff_orientation(data: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """The orientation in the TIFF block of `data` from `start` to `end` (after an "Exif\\0\\0"
    prefix, which some writers add), or 1 (elementwise)."""
    prefixed = tf.reduce_all(tf.equal(bytes_at(data, start, 6), list(_EXIF_PREFIX)), axis=-1)
    start = tf.where(prefixed, start + 6, start)
    header = bytes_at(data, start, 8)
    little = tf.equal(header[..., 0], ord("I")) & tf.equal(header[..., 1], ord("I"))
    big = tf.equal(header[..., 0], ord("M")) & tf.equal(header[..., 1], ord("M"))
    directory = start + unsigned(header, 4, 4, big)
    count = unsigned(bytes_at(data, directory, 2), 0, 2, big)
    entries = bytes_at(data, directory + 2, MAX_DIRECTORY_ENTRIES * 12)
    entries = tf.reshape(entries, tf.concat([tf.shape(start), [MAX_DIRECTORY_ENTRIES, 12]], 0))
    big_entries = big[..., None]
    index = tf.range(MAX_DIRECTORY_ENTRIES, dtype=tf.int64)
    inside = (index < count[..., None]) & (
        directory[..., None] + 2 + (index + 1) * 12 <= end[..., None]
    )
    kind = unsigned(entries, 2, 2, big_entries)
    matches = (
        inside
        & tf.equal(unsigned(entries, 0, 2, big_entries), ORIENTATION_TAG)
        & (tf.equal(kind, _SHORT) | tf.equal(kind, _LONG))
    )
    values = tf.where(
        tf.equal(kind, _SHORT),
        unsigned(entries, 8, 2, big_entries),
        unsigned(entries, 8, 4, big_entries),
    )
    value = _first_found(matches, values)
    # Not checked, as PIL does not check it: the TIFF magic number 42 after the byte order.
    known = (start >= 0) & (little | big) & (value >= 1) & (value <= 8)
    return tf.where(known, tf.cast(value, tf.int32), 1)


def _head(data: tf.Tensor) -> tf.Tensor:
    """The first `HEAD_BYTES` bytes of each file, uint8 [..., HEAD_BYTES], zeros past its end."""
    padded = tf.strings.join([tf.strings.substr(data, 0, HEAD_BYTES), b"\0" * HEAD_BYTES])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, HEAD_BYTES), tf.uint8)
    return tf.reshape(head, tf.concat([tf.shape(data), [HEAD_BYTES]], 0))


def _first_block(
    head: tf.Tensor,
    first: int,
    size_at: int,
    size_bytes: int,
    overhead: int,
    name_at: int,
    name: bytes,
    data_at: int,
):
    """(start, end) of the data of the first of the first `SEGMENTS_SEARCHED` segments (JPEG)
    or chunks (PNG) of each file (`_head`) whose bytes from `name_at` are `name`; -1 where none
    is (elementwise).

    The segments follow each other from `first`: a segment's big-endian size of `size_bytes`
    bytes at `size_at`, plus `overhead`, is where the next one starts; its data start after the
    name and end at `data_at` plus its size. A few small gathers, no graph loop."""
    rank = head.shape.rank - 1
    last = HEAD_BYTES - 1
    weights = tf.constant(
        [256 ** (size_bytes - 1 - index) for index in range(size_bytes)], tf.int64
    )
    size_offsets = tf.range(size_at, size_at + size_bytes, dtype=tf.int64)

    def size(position):
        indices = tf.minimum(position[..., None] + size_offsets, last)
        digits = tf.cast(tf.gather(head, indices, batch_dims=rank), tf.int64)
        return tf.reduce_sum(digits * weights, axis=-1)

    positions = [tf.fill(tf.shape(head)[:-1], tf.constant(first, tf.int64))]
    for _ in range(SEGMENTS_SEARCHED - 1):
        positions.append(tf.minimum(positions[-1] + overhead + size(positions[-1]), last))
    positions = tf.stack(positions, axis=-1)
    window = tf.range(name_at, name_at + len(name), dtype=tf.int64)
    names = tf.gather(head, tf.minimum(positions[..., None] + window, last), batch_dims=rank)
    found = tf.reduce_all(tf.equal(names, tf.constant(list(name), tf.uint8)), axis=-1)
    chosen = _first_found(found, positions)
    start = tf.where(chosen >= 0, chosen + name_at + len(name), _MISSING)
    return start, tf.where(chosen >= 0, chosen + data_at + size(tf.maximum(chosen, 0)), _MISSING)


def _webp_exif_block(data: tf.Tensor, head: tf.Tensor):
    """(start, end) of the data of the `EXIF` chunk of each WebP of `data` (`head`: its
    `_head`) that declares one (the flag of its VP8X header), among its first
    `MAX_WEBP_CHUNKS` chunks; -1 where there is none (elementwise). The chunks are walked only
    when a file of the batch declares one."""
    signature = tf.concat([head[..., :4], head[..., 8:16]], axis=-1)
    expected = tf.constant(list(b"RIFFWEBPVP8X"), tf.uint8)
    has_exif = tf.reduce_all(tf.equal(signature, expected), axis=-1) & tf.not_equal(
        tf.bitwise.bitwise_and(head[..., 20], _WEBP_EXIF_FLAG), 0
    )
    missing = tf.fill(tf.shape(data), tf.constant(_MISSING, tf.int64))

    def walk():
        length = tf.cast(tf.strings.length(data), tf.int64)
        position = tf.where(has_exif, tf.constant(12, tf.int64), missing)
        start, end = missing, missing
        for _ in range(MAX_WEBP_CHUNKS):  # a still WebP has a few chunks
            head = bytes_at(data, position, 8)
            size = unsigned(head, 4, 4, big_endian=False)
            is_exif = tf.reduce_all(tf.equal(head[..., :4], list(b"EXIF")), axis=-1)
            found = (start < 0) & (position >= 0) & is_exif
            start = tf.where(found, position + 8, start)
            end = tf.where(found, position + 8 + size, end)
            following = position + 8 + size + size % 2
            position = tf.where((position >= 0) & (following + 8 <= length), following, missing)
        return start, end

    return tf.cond(tf.reduce_any(has_exif), walk, lambda: (missing, missing))


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32, 1-8) of each image file of `data` (a string tensor of any
    shape: one file or a batch); 1 where a file has none or it cannot be read.

    The EXIF block is looked for where cameras and photo tools write it: in a JPEG, an APP1
    segment holding "Exif\\0\\0" among its first `SEGMENTS_SEARCHED` marker segments; in a
    PNG, an `eXIf` chunk among its first `SEGMENTS_SEARCHED` chunks, both starting in the
    first `HEAD_BYTES` of the file; in a WebP, an `EXIF` chunk among its first
    `MAX_WEBP_CHUNKS` chunks. Its image directory is read only where a file of the batch has
    a block.

    Example:
        >>> exif_orientation(tf.io.read_file("phone_photo.jpg")).numpy()
        6
        >>> exif_orientation(tf.constant([b"not an image", png_bytes])).numpy()
        array([1, 1], dtype=int32)
    """
    data = tf.convert_to_tensor(data, tf.string)
    head = _head(data)
    rank = head.shape.rank - 1
    is_jpeg = tf.equal(head[..., 0], 0xFF) & tf.equal(head[..., 1], 0xD8)
    is_png = tf.reduce_all(tf.equal(head[..., :8], tf.constant(list(_PNG_SIGNATURE), tf.uint8)), -1)
    # JPEG: marker (2 bytes), big-endian length (2, counting itself), "Exif\0\0" in front.
    jpeg_start, jpeg_end = _first_block(head, 2, 2, 2, 2, 4, _EXIF_PREFIX, data_at=2)
    app1 = tf.gather(head, tf.maximum(jpeg_start - 10, 0)[..., None] + [0, 1], batch_dims=rank)
    is_app1 = tf.equal(app1[..., 0], 0xFF) & tf.equal(app1[..., 1], 0xE1)
    # PNG: big-endian length (4, of the data), name (4), data, CRC (4).
    png_start, png_end = _first_block(head, 8, 0, 4, 12, 4, b"eXIf", data_at=8)
    webp_start, webp_end = _webp_exif_block(data, head)  # -1 for other files
    start = tf.where(is_jpeg, tf.where(is_app1, jpeg_start, _MISSING), webp_start)
    start = tf.where(is_png, png_start, start)
    end = tf.where(is_jpeg, jpeg_end, tf.where(is_png, png_end, webp_end))
    return tf.cond(
        tf.reduce_any(start >= 0),
        lambda: _tiff_orientation(data, start, end),
        lambda: tf.ones(tf.shape(start), tf.int32),
    )


def _steps(orientation: tf.Tensor):
    index = tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8) - 1
    return tuple(tf.gather(table, index) for table in (_REVERSE_ROWS, _REVERSE_COLUMNS, _TRANSPOSE))


def turn(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The image [height, width, channels] turned as its EXIF `orientation` (a scalar) says:
    `apply_orientation` without its check for orientation 1, for code that made it already.

    Example:
        >>> turn(tf.zeros([30, 40, 3]), 6).shape
        TensorShape([40, 30, 3])
    """
    reverse_rows, reverse_columns, transpose = _steps(orientation)
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([reverse_rows, reverse_columns]))
    order = tf.where(transpose, tf.constant([1, 0, 2]), tf.constant([0, 1, 2]))
    turned = tf.transpose(tf.reverse(image, axes), order)  # two ops whose axes are data
    if image.shape.rank == 3:  # what the axes being data hide from the static shape
        square = image.shape[0] is not None and image.shape[0] == image.shape[1]
        side = image.shape[0] if square else None
        turned = tf.ensure_shape(turned, [side, side, image.shape[2]])
    return turned


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The image [height, width, channels] as a viewer shows it, for its EXIF `orientation`
    (a scalar). An image of orientation 1 is passed through as it is.

    Example:
        >>> stored = tf.io.decode_jpeg(data, channels=3)               # 3000 x 4000, sideways
        >>> apply_orientation(stored, exif_orientation(data)).shape     # orientation 6
        TensorShape([4000, 3000, 3])
    """
    turned = tf.cond(tf.equal(orientation, 1), lambda: image, lambda: turn(image, orientation))
    return tf.ensure_shape(turned, image.shape)


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
    "turn",
    "upright_shape",
]
