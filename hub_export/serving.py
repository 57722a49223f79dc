"""SavedModels for TensorFlow Serving: encoded images in, probabilities and top-k classes out.

`export_serving` writes `<base_dir>/<version>/`, the layout TensorFlow Serving watches. The
graph needs no Python of ours. Signatures:

- `serving_default`: input `image_bytes`, a string batch `[batch]` of JPEG, PNG, GIF, BMP or
  WebP files (any sizes, mixed). Outputs:
  `probabilities` float32 `[batch, classes]`, `top_k_class_ids` int64 `[batch, k]`,
  `top_k_probabilities` float32 `[batch, k]`, `top_k_class_names` string `[batch, k]` (only
  when class names are known: given to the export, or kept by the model in `class_names`,
  as `bit_tf.finetune` keeps the names of folders and TFDS labels), `valid` bool `[batch]` and
  `reason` string `[batch]` (why an item is not valid; empty for valid ones).
- `predict_images`: input `images`, float32 `[batch, height, width, 3]` in [0, 1]; the same
  outputs (`valid` all true). Values are not checked in the graph: pixel values in 0-255 must
  be divided by 255 first, or sent to `predict_uint8_images`.
- `predict_uint8_images`: input `images`, uint8 `[batch, height, width, 3]` pixels (0-255),
  divided by 255 in the graph; the same outputs.

Images are decoded to RGB (grayscale, palette and RGBA are converted; alpha is dropped; a GIF
gives its first frame; an animated WebP is flagged invalid, as TensorFlow's WebP decoder is not
safe on one; an 8-bit BMP is read as grayscale, as TensorFlow's
BMP decoder ignores its palette) and resized to `image_size` x `image_size` (the crop the model
was fine-tuned at) inside the graph, as BiT's evaluation pipeline does. WebP needs a TensorFlow
with `tf.io.decode_webp` at export; exported by an older one, WebP items are flagged invalid.

Bad bytes fail only their own item. Each item's header is read in the graph before anything
is decoded: an item that is empty, none of the formats, too short to hold its format's header,
or declares zero or more than `max_pixels` pixels is not decoded at all (no memory is spent on
enormous declared sizes). An item whose decoder fails (a truncated or corrupt JPEG, PNG, GIF,
BMP or WebP, an unreadable JPEG header) is dropped by a `tf.data` pipeline inside the graph
(`ignore_errors`) instead of failing the request. Either way the item's `valid` is false, its
probabilities are 0, its top-k ids -1 and names empty, and `reason` says why ("empty", "not a
JPEG, PNG, GIF, BMP or WebP file", "truncated JPEG: no end-of-image marker", "damaged PNG
data: the decoder failed", ...); the other items get the answers they get alone.

Example:
    >>> hub_export.export_serving(classifier, "serving/flowers", version=1, image_size=128,
    ...                           class_names=["daisy", "rose", "tulip"])
    'serving/flowers/1'
    $ saved_model_cli run --dir serving/flowers/1 --tag_set serve \\
        --signature_def serving_default --input_exprs "image_bytes=[b'...jpeg bytes...']"
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from bit_tf import hyperrule
from bit_tf.inference import fold_weight_standardization as fold_weights
from hub_export.atomic import atomic_path, join
from hub_export.tracing import OfficialForward, unit_scale_images

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_TOP_K = 5
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


def _header_bytes(data, offset: int, count: int):
    """`count` bytes of `data` from `offset`, as int64 values (zeros past its end)."""
    padded = tf.strings.join([data, tf.constant(b"\0" * (offset + count))])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, count), tf.uint8), tf.int64)


def _little_endian(raw, start: int, count: int):
    return sum(raw[start + index] * 2 ** (8 * index) for index in range(count))


def _png_size(data):
    raw = _header_bytes(data, 16, 8)  # big-endian
    width = raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]
    height = raw[4] * 2**24 + raw[5] * 2**16 + raw[6] * 2**8 + raw[7]
    return height, width


def _jpeg_size(data):
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0], shape[1]


def _gif_size(data):
    raw = _header_bytes(data, 6, 4)  # the logical screen, little-endian
    return _little_endian(raw, 2, 2), _little_endian(raw, 0, 2)


def _bmp_size(data):
    raw = _header_bytes(data, 18, 8)  # signed little-endian; a negative height is top-down

    def signed(low):
        value = _little_endian(raw, low, 4)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    return signed(4), signed(0)


def _webp_size(data):
    raw = _header_bytes(data, 12, 18)  # from the first chunk's type (byte 12) to byte 30
    kind = tf.strings.substr(tf.strings.join([data, b"\0" * 16]), 12, 4)
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


def _signature_format(data):
    """The format number (`IMAGE_FORMATS`) that `data` starts like, or -1 (elementwise)."""
    padded = tf.strings.join([data, b"\0" * 12])  # substr fails for a start past the end
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
    padded = tf.strings.join([data, b"\0" * 24])
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
    # Padded on both sides: substr fails for a start outside the string.
    padded = tf.strings.join([b"\1" * 12, data, b"\0" * 8])
    truncated = tf.zeros(tf.shape(data), tf.bool)
    for number, marker in _END_MARKERS.items():
        ends = tf.equal(tf.strings.substr(padded, -8 - len(marker), len(marker)), marker)
        truncated |= tf.equal(image_format, number) & ~ends
    # BMP: the file size at byte 2; WebP: the RIFF size at byte 4, which counts from byte 8.
    for number, offset, extra in ((_BMP, 2, 0), (_WEBP, 4, 8)):
        raw = tf.io.decode_raw(tf.strings.substr(padded, 12 + offset, 4), tf.uint8)
        raw = tf.reshape(tf.cast(raw, tf.int64), [-1, 4])
        declared = raw[:, 0] + raw[:, 1] * 2**8 + raw[:, 2] * 2**16 + raw[:, 3] * 2**24 + extra
        truncated |= tf.equal(image_format, number) & (length < declared)
    return truncated


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


def _decode(data, image_format, image_size):
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
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def declared_sizes(image_bytes):
    """The (heights, widths) that a string batch of image files declare in their headers.

    Nothing is decoded. An item of none of the formats (`IMAGE_FORMATS`), or too short to hold
    its header, declares (0, 0). A JPEG whose header cannot be read fails the whole batch with
    `tf.errors.InvalidArgumentError` (`decode_images` flags it instead).

    Example:
        >>> heights, widths = declared_sizes(tf.constant([png_of_40x30_pixels, b"junk"]))
        >>> heights.numpy(), widths.numpy()
        (array([40,  0]), array([30,  0]))
    """

    def size(data):
        return tf.stack(_declared_size(data, _image_format(data)))

    sizes = tf.map_fn(
        size,
        tf.convert_to_tensor(image_bytes, tf.string),
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
    and resized to `image_size` x `image_size`. An item that cannot be decoded (see the
    module docstring) is zeros, `valid` false and `reason` says why, e.g. "truncated JPEG:
    no end-of-image marker"; the other items are decoded as they would be
    alone. Graph ops only: it runs inside exported signatures.

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
    decodable_format = tf.where(tf.equal(problems, _OK), image_format, -1)

    def prepare(index, data, image_format):
        height, width = _declared_size(data, image_format)
        problem = tf.where(height * width > 0, _OK, _NO_PIXELS)
        # Divide rather than multiply: no overflow for any declared size.
        problem = tf.where(height > max_pixels // tf.maximum(width, 1), _TOO_MANY, problem)
        problem = tf.where(image_format < 0, _UNKNOWN, problem)  # already flagged: kept below
        image = tf.cond(
            tf.equal(problem, _OK),
            lambda: _decode(data, image_format, image_size),
            lambda: tf.zeros([image_size, image_size, 3], tf.float32),
        )
        return index, image, problem

    # A decoder's error (a damaged or truncated file) drops that item from the dataset instead
    # of failing the request; the items that come through are put back in their places.
    decoded = (
        tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes, decodable_format))
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors(log_warning=True)
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


class ServingModule(tf.Module):
    """The object `export_serving` saves: preprocessing, the BiT forward pass, the top-k.

    Example:
        >>> module = ServingModule(model, image_size=128, class_names=["cat", "dog"])
        >>> module.predict_images(images)["top_k_class_names"]
    """

    def __init__(
        self,
        model: keras.Model,
        image_size: int,
        class_names: Sequence[str] | None = None,
        top_k: int = DEFAULT_TOP_K,
        fold_weight_standardization: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(name=None)
        if class_names is None:
            class_names = getattr(model, "class_names", None)  # a BitModel's, when it has them
        if fold_weight_standardization:
            model = fold_weights(model)
        self.forward = OfficialForward(model, trainable=False)
        if not self.forward.has_head:
            raise ValueError(
                "Serving exports classify, but this model has no head (num_classes=None). "
                "Export the fine-tuned classifier, or use export_module for feature vectors."
            )
        num_classes = self.forward.layout["num_classes"]
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_classes:
                raise ValueError(
                    f"{len(class_names)} class names given for a model with {num_classes} "
                    "classes; give exactly one name per class, in class-id order."
                )
            self.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        else:
            self.class_names = None
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.top_k = min(int(top_k), num_classes)
        # The one trace of the forward pass, which every signature calls.
        self._forward_images = tf.function(
            self.forward.__call__,
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
        )

    def _answer(self, images, valid, reasons):
        logits = self._forward_images(images)
        probabilities = tf.nn.softmax(logits) * tf.cast(valid, tf.float32)[:, None]
        top_probabilities, top_ids = tf.math.top_k(probabilities, k=self.top_k)
        top_ids = tf.where(valid[:, None], tf.cast(top_ids, tf.int64), tf.constant(-1, tf.int64))
        outputs = {
            "probabilities": probabilities,
            "top_k_class_ids": top_ids,
            "top_k_probabilities": top_probabilities,
            "valid": valid,
            "reason": reasons,
        }
        if self.class_names is not None:
            names = tf.gather(self.class_names, tf.maximum(top_ids, 0))
            outputs["top_k_class_names"] = tf.where(valid[:, None], names, "")
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        """Image file bytes -> probabilities, top-k ids/probabilities/names, validity, reason."""
        images, valid, reasons = decode_images_with_reasons(
            image_bytes, self.image_size, self.max_pixels
        )
        return self._answer(images, valid, reasons)

    def _answer_arrays(self, images):
        images = tf.image.resize(unit_scale_images(images), [self.image_size, self.image_size])
        count = tf.shape(images)[:1]
        return self._answer(images, tf.ones(count, tf.bool), tf.fill(count, ""))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def predict_images(self, images):
        """Float images in [0, 1], any size -> the same outputs as `serve_bytes`."""
        return self._answer_arrays(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def predict_uint8_images(self, images):
        """uint8 pixels (0-255), any size -> the same outputs as `serve_bytes`."""
        return self._answer_arrays(images)


def hyperrule_image_size(model_name: str | None = None, large_images: bool = True) -> int:
    """The crop size the BiT-HyperRule fine-tunes at, as `bit_tf.hyperrule.get_resolution` says.

    A classifier is best served at the size it was fine-tuned at.

    Args:
        model_name: the architecture, e.g. "BiT-M-R152x4" (the rule looks for "R152x4" in it).
        large_images: whether the training images were at least the rule's small-image limit
            (96x96 pixels in area).

    Returns:
        The square crop size in pixels.

    Example:
        >>> hyperrule_image_size(), hyperrule_image_size("BiT-M-R152x4")
        (384, 480)
        >>> hyperrule_image_size(large_images=False)
        128
    """
    side = math.isqrt(hyperrule.SMALL_IMAGE_AREA)  # side x side images are not small
    if not large_images:
        side -= 1
    return hyperrule.get_resolution((side, side), model_name)[1]


def _model_image_size(model: keras.Model) -> int | None:
    shape = model.input_shape
    if shape[1] is not None and shape[1] == shape[2]:
        return int(shape[1])
    return None


def serving_version_dir(base_dir: str, version: int) -> str:
    """The folder `export_serving` writes `version` to: `<base_dir>/<version>`.

    Raises:
        ValueError: `version` is not a positive integer (TensorFlow Serving's versions are).

    Example:
        >>> serving_version_dir("serving/flowers", 2)
        'serving/flowers/2'
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving), got {version!r}.")
    return join(base_dir, str(version))


def export_serving(
    model: keras.Model,
    base_dir: str,
    version: int = 1,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    fold_weight_standardization: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> str:
    """Writes a classifier as a TensorFlow Serving SavedModel at `<base_dir>/<version>/`.

    Written atomically (temporary sibling, then rename): TensorFlow Serving, which polls
    `base_dir` for new numeric versions, never sees a half-written one.

    Args:
        model: a bit_tf classifier (with a head), e.g. after `bit_tf.finetune`.
        base_dir: the model's folder for TensorFlow Serving (local or gs://).
        version: positive integer version; an existing one is kept unless `overwrite`.
        class_names: one name per class, in class-id order (adds `top_k_class_names`); None:
            the model's own `class_names` (`bit_tf.BitModel`), if it has them.
        image_size: the square crop the model was fine-tuned at (`hyperrule_image_size`, from
            `bit_tf.hyperrule.get_resolution`: 128 for images under 96x96 pixels, else 384,
            or 480 for R152x4). Defaults to the model's fixed input size.
        top_k: how many classes to list per image.
        fold_weight_standardization: standardize the kernels once here and use plain
            convolutions (same outputs to 1e-5, faster; the export can no longer be trained).
        max_pixels: images declaring more pixels are flagged invalid without being decoded.
        overwrite: replace an existing version.

    Returns:
        The version folder.

    Example:
        >>> export_serving(classifier, "serving/flowers", version=2, image_size=128,
        ...                class_names=["daisy", "dandelion", "rose", "sunflower", "tulip"])
        'serving/flowers/2'
    """
    target = serving_version_dir(base_dir, version)
    if image_size is None:
        image_size = _model_image_size(model)
        if image_size is None:
            side = math.isqrt(hyperrule.SMALL_IMAGE_AREA)
            raise ValueError(
                f"Model {model.name!r} accepts any image size; pass image_size= (the crop it "
                f"was fine-tuned at; under the BiT-HyperRule {hyperrule_image_size(None, False)} "
                f"for images under {side}x{side} pixels, else {hyperrule_image_size()}, or "
                f"{hyperrule_image_size('R152x4')} for R152x4: see hyperrule_image_size)."
            )
    module = ServingModule(
        model,
        image_size=image_size,
        class_names=class_names,
        top_k=top_k,
        fold_weight_standardization=fold_weight_standardization,
        max_pixels=max_pixels,
    )
    signatures = {
        "serving_default": module.serve_bytes.get_concrete_function(),
        "predict_images": module.predict_images.get_concrete_function(),
        "predict_uint8_images": module.predict_uint8_images.get_concrete_function(),
    }
    with atomic_path(target, overwrite=overwrite, what="Serving version") as temporary:
        tf.saved_model.save(module, temporary, signatures=signatures)
    return target
