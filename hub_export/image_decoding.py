"""Image files to pixels in graph ops: the decoding of the serving export and of bit-predict.

`decode_images_with_reasons` reads a string batch of JPEG, PNG, GIF, BMP or WebP files (any
sizes, mixed) with TensorFlow ops only, so it runs inside exported SavedModels. Images are
decoded to RGB (grayscale, palette and RGBA are converted; alpha is dropped; a GIF gives its
first frame; an animated WebP is flagged invalid, as TensorFlow's WebP decoder is not safe on
one; an 8-bit BMP is read as grayscale, as TensorFlow's BMP decoder ignores its palette),
resized to `image_size` x `image_size` (the crop the model was fine-tuned at), as BiT's
evaluation pipeline does, and turned upright by their EXIF orientation (JPEG, PNG and WebP;
`bit_tf.data.orientation`), as photo viewers and the training folder reader show them. WebP needs a
TensorFlow with `tf.io.decode_webp` at export; exported by an older one, WebP items are flagged
invalid.

Bad bytes fail only their own item. Each item's header is read before anything is decoded: an
item that is empty, none of the formats, too short to hold its format's header, declares zero
or more than `max_pixels` pixels, or is a JPEG cut short (its header ends early, or no
end-of-image marker follows its scan) is not decoded at all (no memory is spent on enormous
declared sizes, and the decoder writes no log line about it). An item whose decoder fails (a
damaged PNG, GIF, BMP or WebP, or a JPEG whose compressed data is damaged) is dropped by a
`tf.data` pipeline inside the graph (`ignore_errors`) instead of failing the request. Either
way the item's `valid` is false and `reason` says why ("empty", "not a JPEG, PNG, GIF, BMP or
WebP file", "truncated JPEG: no end-of-image marker", "damaged PNG data: the decoder failed",
...); the other items are decoded as they would be alone. Only the JPEG decoder library writes
a line of its own to stderr, for a JPEG whose compressed data is damaged.

Example:
    >>> images, valid, reasons = decode_images_with_reasons(
    ...     tf.constant([open("cat.jpg", "rb").read(), b"junk"]), image_size=128)
    >>> images.shape, valid.numpy()
    (TensorShape([2, 128, 128, 3]), array([ True, False]))
    >>> reasons.numpy()[1]
    b'not a JPEG, PNG, GIF, BMP or WebP file'
"""

from __future__ import annotations

import functools

import tensorflow as tf

from bit_tf.data.image_bytes import bytes_at, jpeg_segments, unsigned
from bit_tf.data.orientation import apply_orientation, exif_orientation

DEFAULT_MAX_PIXELS = 64_000_000
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BMP_SIGNATURE = b"BM"
WEBP_SIGNATURES = (b"RIFF", b"WEBP")  # at bytes 0 and 8
#: The formats `decode_images` reads, in the order of the format numbers of its graph.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
_JPEG, _PNG, _GIF, _BMP, _WEBP = range(len(IMAGE_FORMATS))
#: The bytes each format needs before its size can be read.
_HEADER_BYTES = (
    len(JPEG_SIGNATURE),  # the frame header is found by extract_jpeg_shape
    24,  # signature (8), IHDR length and type (8), width (4), height (4)
    10,  # signature (6), width (2), height (2), little-endian
    26,  # file header (14), info header size (4), width (4), height (4)
    30,  # RIFF header (12), chunk header (8), the sizes of any of the three chunk kinds
)
# The bytes a complete file ends with (JPEG: the end-of-image marker, PNG: the IEND chunk, GIF:
# the trailer). BMP and WebP declare their file size instead.
_END_MARKERS = {_JPEG: b"\xff\xd9", _PNG: b"\0\0\0\0IEND\xaeB`\x82", _GIF: b";"}

# Why an item is not valid: the `reason` output, one code per item.
(
    _OK,
    _EMPTY,
    _UNKNOWN,
    _SHORT,
    _NO_PIXELS,
    _TOO_MANY,
    _NO_DECODER,
    _ANIMATED,
    _TRUNCATED,
    _DAMAGED,
) = range(10)
_REASONS = {
    _OK: "",
    _EMPTY: "empty",
    _UNKNOWN: "not a " + ", ".join(IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]} file",
    _SHORT: "too short to hold a {format} header",
    _NO_PIXELS: "the {format} header declares no pixels",
    _TOO_MANY: "the {format} header declares more than {max_pixels:,} pixels",
    _NO_DECODER: "{format} is not read by the TensorFlow that wrote this export",
    _ANIMATED: "animated {format} is not read",
    _TRUNCATED: "truncated {format}: {missing}",
    _DAMAGED: "damaged {format} data: the decoder failed",
}
_MISSING_ENDS = {
    "JPEG": "no end-of-image marker",
    "PNG": "no IEND chunk",
    "GIF": "no trailer",
    "BMP": "shorter than its header declares",
    "WebP": "shorter than its header declares",
}


def _can_decode_webp() -> bool:
    return hasattr(tf.io, "decode_webp")


def _little_endian(raw, start: int, count: int):
    return unsigned(raw, start, count, big_endian=False)


def _png_size(data):
    raw = bytes_at(data, 16, 8)  # big-endian
    return unsigned(raw, 4, 4, big_endian=True), unsigned(raw, 0, 4, big_endian=True)


def _jpeg_size(data):
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0], shape[1]


def _gif_size(data):
    raw = bytes_at(data, 6, 4)  # the logical screen, little-endian
    return _little_endian(raw, 2, 2), _little_endian(raw, 0, 2)


def _bmp_size(data):
    raw = bytes_at(data, 18, 8)  # signed little-endian; a negative height is top-down

    def signed(low):
        value = _little_endian(raw, low, 4)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    return signed(4), signed(0)


def _webp_size(data):
    raw = bytes_at(data, 12, 18)  # from the first chunk's type (byte 12) to byte 30
    kind = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 16), b"\0" * 16]), 12, 4)
    # VP8X (extended): the canvas, 24-bit little-endian, minus one, at bytes 24 and 27.
    extended = (_little_endian(raw, 15, 3) + 1, _little_endian(raw, 12, 3) + 1)
    # VP8L (lossless): after the signature byte 0x2f, 14 bits each of width and height, minus one.
    bits = _little_endian(raw, 9, 4)
    lossless = ((bits // 2**14) % 2**14 + 1, bits % 2**14 + 1)
    # VP8 (lossy): after the frame tag and start code, 14 bits each at bytes 26 and 28.
    lossy = (_little_endian(raw, 16, 2) % 2**14, _little_endian(raw, 14, 2) % 2**14)
    zero = tf.constant(0, tf.int64)
    sizes = [(kind == b"VP8X", extended), (kind == b"VP8L", lossless), (kind == b"VP8 ", lossy)]
    height, width = zero, zero
    for matches, (chunk_height, chunk_width) in reversed(sizes):
        height = tf.where(matches, chunk_height, height)
        width = tf.where(matches, chunk_width, width)
    return height, width


def _first_bytes(data, count: int):
    """The first `count` bytes of each item, padded with zeros to `count` (elementwise): substr
    fails for a start past the end."""
    return tf.strings.join([tf.strings.substr(data, 0, count), b"\0" * count])


def _last_bytes(data, count: int):
    """The last `count` bytes of each item, padded in front with 0x01 to `count` (elementwise)."""
    start = tf.maximum(tf.strings.length(data) - count, 0)
    counts = tf.fill(tf.shape(start), count)  # substr takes a length per start
    joined = tf.strings.join([b"\1" * count, tf.strings.substr(data, start, counts)])
    return tf.strings.substr(joined, tf.strings.length(joined) - count, counts)


def _signature_format(data):
    """The format number (`IMAGE_FORMATS`) that `data` starts like, or -1 (elementwise)."""
    padded = _first_bytes(data, 12)
    starts = [
        (tf.equal(tf.strings.substr(data, 0, 3), JPEG_SIGNATURE), _JPEG),
        (tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE), _PNG),
        (
            tf.equal(tf.strings.substr(data, 0, 6), GIF_SIGNATURES[0])
            | tf.equal(tf.strings.substr(data, 0, 6), GIF_SIGNATURES[1]),
            _GIF,
        ),
        (tf.equal(tf.strings.substr(data, 0, 2), BMP_SIGNATURE), _BMP),
        (
            tf.equal(tf.strings.substr(data, 0, 4), WEBP_SIGNATURES[0])
            & tf.equal(tf.strings.substr(padded, 8, 4), WEBP_SIGNATURES[1]),
            _WEBP,
        ),
    ]
    image_format = tf.fill(tf.shape(data), tf.constant(-1, tf.int32))
    for matches, number in reversed(starts):
        image_format = tf.where(matches, tf.constant(number, tf.int32), image_format)
    return image_format


def _header_problems(data, image_format):
    """Per item (elementwise): `_OK`, or why nothing of it can be decoded, seen without decoding
    (empty, unknown format, too short for its header, WebP without a decoder, animated WebP)."""
    length = tf.strings.length(data)
    header_bytes = tf.gather(tf.constant(_HEADER_BYTES, tf.int32), tf.maximum(image_format, 0))
    problem = tf.where(length < header_bytes, _SHORT, _OK)
    # An animated WebP (the animation flag of a VP8X header) is not given to tf.io.decode_webp,
    # which can corrupt the memory of the process on one.
    padded = _first_bytes(data, 24)
    flags = tf.reshape(tf.io.decode_raw(tf.strings.substr(padded, 20, 1), tf.uint8), tf.shape(data))
    animated = tf.equal(tf.strings.substr(padded, 12, 4), b"VP8X") & tf.not_equal(
        tf.bitwise.bitwise_and(flags, 2), 0
    )
    problem = tf.where(tf.equal(image_format, _WEBP) & animated, _ANIMATED, problem)
    if not _can_decode_webp():
        problem = tf.where(tf.equal(image_format, _WEBP), _NO_DECODER, problem)
    problem = tf.where(image_format < 0, _UNKNOWN, problem)
    return tf.where(tf.equal(length, 0), _EMPTY, problem)


def _image_format(data):
    """The format number of `data` (`IMAGE_FORMATS`), or -1: none of them, too short to hold its
    header, or WebP without a decoder."""
    image_format = _signature_format(data)
    return tf.where(tf.equal(_header_problems(data, image_format), _OK), image_format, -1)


def _declared_size(data, image_format):
    zero = tf.constant(0, tf.int64)
    return tf.switch_case(
        image_format,
        branch_fns={
            _JPEG: lambda: _jpeg_size(data),
            _PNG: lambda: _png_size(data),
            _GIF: lambda: _gif_size(data),
            _BMP: lambda: _bmp_size(data),
            _WEBP: lambda: _webp_size(data),
        },
        default=lambda: (zero, zero),
    )


def _looks_truncated(data, image_format):
    """Per item (elementwise): whether the file ends before its format's end: no end marker
    (JPEG, PNG, GIF), or fewer bytes than its header declares (BMP, WebP)."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    first, last = _first_bytes(data, 8), _last_bytes(data, 12)
    truncated = tf.zeros(tf.shape(data), tf.bool)
    for number, marker in _END_MARKERS.items():
        ends = tf.equal(tf.strings.substr(last, 12 - len(marker), len(marker)), marker)
        truncated |= tf.equal(image_format, number) & ~ends
    # BMP: the file size at byte 2; WebP: the RIFF size at byte 4, which counts from byte 8.
    for number, offset, extra in ((_BMP, 2, 0), (_WEBP, 4, 8)):
        raw = tf.io.decode_raw(tf.strings.substr(first, offset, 4), tf.uint8)
        raw = tf.reshape(tf.cast(raw, tf.int64), [-1, 4])
        declared = raw[:, 0] + raw[:, 1] * 2**8 + raw[:, 2] * 2**16 + raw[:, 3] * 2**24 + extra
        truncated |= tf.equal(image_format, number) & (length < declared)
    return truncated


def _cut_jpegs(data, image_format):
    """Per item (elementwise): whether it is a JPEG cut short
    (`bit_tf.data.image_bytes.jpeg_segments`), which neither `extract_jpeg_shape` nor the decoder
    may see: both write a line to stderr for such a file. Only the JPEGs that do not end with an
    end-of-image marker are walked: cut ones, and those with data appended (a motion photo's
    video)."""
    ends = tf.equal(_last_bytes(data, 2), b"\xff\xd9")
    suspects = tf.equal(image_format, _JPEG) & ~ends

    def walk():
        indices = tf.where(suspects)
        cut = tf.map_fn(
            lambda item: jpeg_segments(item).truncated,
            tf.gather_nd(data, indices),
            fn_output_signature=tf.bool,
        )
        return tf.scatter_nd(indices, cut, tf.shape(suspects, out_type=tf.int64))

    return tf.cond(tf.reduce_any(suspects), walk, lambda: tf.zeros_like(suspects))


def _bmp_rgb(data):
    """A BMP as RGB: its channels as stored (1, 3 or 4), gray repeated, alpha dropped."""
    image = tf.io.decode_bmp(data)
    return tf.cond(
        tf.equal(tf.shape(image)[-1], 1),
        lambda: tf.tile(image, [1, 1, 3]),
        lambda: image[..., :3],
    )


def _webp_rgb(data):
    """A still WebP as RGB (alpha dropped); nothing where TensorFlow has no decoder."""
    if not _can_decode_webp():  # never reached: such items are flagged before decoding
        return tf.zeros([1, 1, 3], tf.uint8)
    return tf.io.decode_webp(data)[0, :, :, :3]


def _decode(data, image_format, image_size, orientation):
    image = tf.switch_case(
        image_format,
        branch_fns=[
            lambda: tf.io.decode_jpeg(data, channels=3),
            lambda: tf.io.decode_png(data, channels=3),
            lambda: tf.io.decode_gif(data)[0],  # the first frame
            lambda: _bmp_rgb(data),
            lambda: _webp_rgb(data),
        ],
    )
    image = tf.ensure_shape(image, [None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size])  # uint8 in, float32 out
    # Turned upright after the resize: the crop is square, so this is the resize of the upright
    # image (to float round-off), at the cost of turning the small image.
    resized = apply_orientation(resized, orientation)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def declared_sizes(image_bytes):
    """The (heights, widths) that a string batch of image files declare in their headers.

    Nothing is decoded. An item of none of the formats (`IMAGE_FORMATS`), or too short to hold
    its header, declares (0, 0), and so does a JPEG that is cut short. A JPEG whose
    header the decoder cannot read fails the whole batch with `tf.errors.InvalidArgumentError`
    (`decode_images` flags it instead). Sizes are as stored, before any EXIF orientation.

    Example:
        >>> heights, widths = declared_sizes(tf.constant([png_of_40x30_pixels, b"junk"]))
        >>> heights.numpy(), widths.numpy()
        (array([40,  0]), array([30,  0]))
    """

    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image_format = _image_format(image_bytes)
    image_format = tf.where(_cut_jpegs(image_bytes, image_format), -1, image_format)
    sizes = tf.map_fn(
        lambda item: tf.stack(_declared_size(*item)),
        (image_bytes, image_format),
        fn_output_signature=tf.TensorSpec([2], tf.int64),
    )
    return sizes[:, 0], sizes[:, 1]


def _reason_table(max_pixels: int):
    """[reason code, format number (the last row: none)] -> the `reason` text."""
    names = (*IMAGE_FORMATS, "image")
    return tf.constant(
        [
            [
                _REASONS[code].format(
                    format=name, max_pixels=max_pixels, missing=_MISSING_ENDS.get(name, "")
                )
                for name in names
            ]
            for code in range(len(_REASONS))
        ]
    )


def decode_images_with_reasons(image_bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes a string batch of image files to float32 [batch, size, size, 3], a validity flag
    and a reason per item (empty where valid).

    Each file is decoded to RGB (grayscale repeated, alpha dropped, the first frame of a GIF)
    and resized to `image_size` x `image_size`, turned upright by its EXIF orientation
    (`bit_tf.data.orientation`). An item that cannot be decoded (see the module docstring) is
    zeros, `valid` false and `reason` says why, e.g. "truncated JPEG: no end-of-image
    marker"; the other items are decoded as they would be alone. Graph ops only: it runs
    inside exported signatures.

    Example:
        >>> images, valid, reasons = decode_images_with_reasons(
        ...     tf.constant([jpeg_bytes, jpeg_bytes[:1000], b"junk"]), 128)
        >>> valid.numpy(), reasons.numpy()[1]
        (array([ True, False, False]), b'truncated JPEG: no end-of-image marker')
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    if tf.executing_eagerly():  # one trace per size, not one per call
        return _eager_decoder(image_size, max_pixels)(image_bytes)
    count = tf.shape(image_bytes)[0]
    image_format = _signature_format(image_bytes)
    problems = _header_problems(image_bytes, image_format)
    # A JPEG cut short is flagged here: given to the decoder, it would write a line to stderr.
    cut = _cut_jpegs(image_bytes, image_format)
    problems = tf.where(tf.equal(problems, _OK) & cut, _TRUNCATED, problems)
    decodable_format = tf.where(tf.equal(problems, _OK), image_format, -1)
    # Read for the whole batch at once: ops in the tf.data map below run once per item.
    orientations = exif_orientation(image_bytes)

    def prepare(index, data, image_format, orientation):
        height, width = _declared_size(data, image_format)
        problem = tf.where(height * width > 0, _OK, _NO_PIXELS)
        # Divide rather than multiply: no overflow for any declared size.
        problem = tf.where(height > max_pixels // tf.maximum(width, 1), _TOO_MANY, problem)
        problem = tf.where(image_format < 0, _UNKNOWN, problem)  # already flagged: kept below
        image = tf.cond(
            tf.equal(problem, _OK),
            lambda: _decode(data, image_format, image_size, orientation),
            lambda: tf.zeros([image_size, image_size, 3], tf.float32),
        )
        return index, image, problem

    # A decoder's error (a damaged or truncated file) drops that item from the dataset instead
    # of failing the request, without a log line; the items that come through are put back in
    # their places.
    decoded = (
        tf.data.Dataset.from_tensor_slices(
            (tf.range(count), image_bytes, decodable_format, orientations)
        )
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors(log_warning=False)
    )
    sentinel = tf.data.Dataset.from_tensors(  # so that the single batch is never empty
        (tf.constant(-1), tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(_OK))
    )
    indices, images, decoded_problems = (
        decoded.concatenate(sentinel).batch(tf.cast(count, tf.int64) + 1).get_single_element()
    )
    indices, images, decoded_problems = indices[:-1, None], images[:-1], decoded_problems[:-1]
    images = tf.cond(  # no copy where every item came through, as almost always
        tf.equal(tf.shape(indices)[0], count),
        lambda: images,
        lambda: tf.scatter_nd(indices, images, [count, image_size, image_size, 3]),
    )
    failed = tf.where(_looks_truncated(image_bytes, image_format), _TRUNCATED, _DAMAGED)
    decoded_problems = tf.tensor_scatter_nd_update(failed, indices, decoded_problems)
    problems = tf.where(tf.equal(problems, _OK), decoded_problems, problems)
    valid = tf.equal(problems, _OK)
    format_row = tf.where(image_format >= 0, image_format, len(IMAGE_FORMATS))
    reasons = tf.gather_nd(_reason_table(max_pixels), tf.stack([problems, format_row], axis=1))
    return images, valid, reasons


@functools.lru_cache(maxsize=16)
def _eager_decoder(image_size: int, max_pixels: int):
    return tf.function(
        lambda image_bytes: decode_images_with_reasons(image_bytes, image_size, max_pixels),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )


def decode_images(image_bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes a string batch of image files to float32 [batch, size, size, 3] and a validity
    flag per item: `decode_images_with_reasons` without the reasons.

    Example:
        >>> images, valid = decode_images(tf.constant([jpeg_bytes, b"junk"]), 128)
        >>> valid.numpy()
        array([ True, False])
    """
    images, valid, _ = decode_images_with_reasons(image_bytes, image_size, max_pixels)
    return images, valid
