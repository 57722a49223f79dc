"""SavedModels for TensorFlow Serving: encoded images in, probabilities and top-k classes out.

`export_serving` writes `<base_dir>/<version>/`, the layout TensorFlow Serving watches. The
graph needs no Python of ours. Signatures:

- `serving_default`: input `image_bytes`, a string batch `[batch]` of JPEG, PNG, GIF or BMP
  files (any sizes, mixed). Outputs:
  `probabilities` float32 `[batch, classes]`, `top_k_class_ids` int64 `[batch, k]`,
  `top_k_probabilities` float32 `[batch, k]`, `top_k_class_names` string `[batch, k]` (only
  when class names are known: given to the export, or kept by the model in `class_names`,
  as `bit_tf.finetune` keeps the names of folders and TFDS labels), and `valid` bool `[batch]`.
- `predict_images`: input `images`, float32 `[batch, height, width, 3]` in [0, 1]; the same
  outputs (`valid` all true).

Images are decoded to RGB (grayscale, palette and RGBA are converted; alpha is dropped; a GIF
gives its first frame; an 8-bit BMP is read as grayscale, as TensorFlow's BMP decoder ignores
its palette) and resized to `image_size` x `image_size` (the crop the model was
fine-tuned at) inside the graph, as BiT's evaluation pipeline does.

Bad bytes. Before decoding, each item's header is read in the graph. An item that is empty,
none of JPEG, PNG, GIF and BMP, declares zero or more than `max_pixels` pixels, or is too
short to hold its format's header, is flagged per item: `valid` is false, its probabilities
are 0, its top-k ids are -1 and names empty; the other items of the batch are answered
normally, and nothing is decoded for it (no memory is spent on enormous declared sizes). An
item that starts like one of the formats but is damaged inside (an unreadable JPEG header, a
corrupt or truncated body) makes the decoder fail the whole request with `INVALID_ARGUMENT`, as
TensorFlow Serving reports any bad request; the server keeps serving the next one.

Example:
    >>> hub_export.export_serving(classifier, "serving/flowers", version=1, image_size=128,
    ...                           class_names=["daisy", "rose", "tulip"])
    'serving/flowers/1'
    $ saved_model_cli run --dir serving/flowers/1 --tag_set serve \\
        --signature_def serving_default --input_exprs "image_bytes=[b'...jpeg bytes...']"
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from bit_tf import hyperrule
from bit_tf.inference import fold_weight_standardization as fold_weights
from hub_export.atomic import atomic_path, join
from hub_export.tracing import OfficialForward

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_TOP_K = 5
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BMP_SIGNATURE = b"BM"
#: The formats `decode_images` reads, in the order of the format numbers of its graph.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
_JPEG, _PNG, _GIF, _BMP = range(len(IMAGE_FORMATS))
_PNG_HEADER_BYTES = 24  # signature (8), IHDR length and type (8), width (4), height (4)
_GIF_HEADER_BYTES = 10  # signature (6), width (2), height (2), little-endian
_BMP_HEADER_BYTES = 26  # file header (14), info header size (4), width (4), height (4)


def _header_bytes(data, offset: int, count: int):
    """`count` bytes of `data` from `offset`, as int64 values (zeros past its end)."""
    padded = tf.strings.join([data, tf.constant(b"\0" * (offset + count))])
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, count), tf.uint8), tf.int64)


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
    return raw[2] + raw[3] * 2**8, raw[0] + raw[1] * 2**8


def _bmp_size(data):
    raw = _header_bytes(data, 18, 8)  # signed little-endian; a negative height is top-down

    def signed(low):
        value = raw[low] + raw[low + 1] * 2**8 + raw[low + 2] * 2**16 + raw[low + 3] * 2**24
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    return signed(4), signed(0)


def _image_format(data):
    """The format number of `data` (`IMAGE_FORMATS`), or -1: none of them, or too short to hold
    its header."""
    length = tf.strings.length(data)
    is_gif = tf.logical_or(
        tf.equal(tf.strings.substr(data, 0, 6), GIF_SIGNATURES[0]),
        tf.equal(tf.strings.substr(data, 0, 6), GIF_SIGNATURES[1]),
    )
    is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE)
    is_bmp = tf.equal(tf.strings.substr(data, 0, 2), BMP_SIGNATURE)
    formats = [
        (tf.equal(tf.strings.substr(data, 0, 3), JPEG_SIGNATURE), _JPEG),
        (is_png & (length >= _PNG_HEADER_BYTES), _PNG),
        (is_gif & (length >= _GIF_HEADER_BYTES), _GIF),
        (is_bmp & (length >= _BMP_HEADER_BYTES), _BMP),
    ]
    image_format = tf.constant(-1, tf.int32)
    for matches, number in reversed(formats):
        image_format = tf.where(matches, tf.constant(number, tf.int32), image_format)
    return image_format


def _declared_size(data, image_format):
    zero = tf.constant(0, tf.int64)
    return tf.switch_case(
        image_format,
        branch_fns={
            _JPEG: lambda: _jpeg_size(data),
            _PNG: lambda: _png_size(data),
            _GIF: lambda: _gif_size(data),
            _BMP: lambda: _bmp_size(data),
        },
        default=lambda: (zero, zero),
    )


def _bmp_rgb(data):
    """A BMP as RGB: its channels as stored (1, 3 or 4), gray repeated, alpha dropped."""
    image = tf.io.decode_bmp(data)
    return tf.cond(
        tf.equal(tf.shape(image)[-1], 1),
        lambda: tf.tile(image, [1, 1, 3]),
        lambda: image[..., :3],
    )


def _decode(data, image_format, image_size):
    image = tf.switch_case(
        image_format,
        branch_fns=[
            lambda: tf.io.decode_jpeg(data, channels=3),
            lambda: tf.io.decode_png(data, channels=3),
            lambda: tf.io.decode_gif(data)[0],  # the first frame
            lambda: _bmp_rgb(data),
        ],
    )
    image = tf.ensure_shape(image, [None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size])  # uint8 in, float32 out
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def declared_sizes(image_bytes):
    """The (heights, widths) that a string batch of image files declare in their headers.

    Nothing is decoded. An item of none of the formats (`IMAGE_FORMATS`), or too short to hold
    its header, declares (0, 0). A JPEG whose header cannot be read fails the whole batch with
    `tf.errors.InvalidArgumentError`, as in `decode_images`.

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


def decode_images(image_bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes a string batch of JPEG/PNG/GIF/BMP files to float32 [batch, size, size, 3] and
    a validity flag per item.

    Each file is decoded to RGB (grayscale repeated, alpha dropped, a GIF's first frame) and
    resized to `image_size` x `image_size`. See the module docstring for which items are
    flagged invalid and which fail the whole batch.

    Example:
        >>> images, valid = decode_images(tf.constant([jpeg_bytes, b"junk"]), 128)
        >>> valid.numpy()
        array([ True, False])
    """

    def prepare(data):
        image_format = _image_format(data)
        height, width = _declared_size(data, image_format)
        valid = tf.logical_and(
            image_format >= 0,
            tf.logical_and(
                tf.logical_and(height > 0, width > 0),
                # Divide rather than multiply: no overflow for any declared size.
                height <= max_pixels // tf.maximum(width, 1),
            ),
        )
        image = tf.cond(
            valid,
            lambda: _decode(data, image_format, image_size),
            lambda: tf.zeros([image_size, image_size, 3], tf.float32),
        )
        return image, valid

    return tf.map_fn(
        prepare,
        tf.convert_to_tensor(image_bytes, tf.string),
        fn_output_signature=(
            tf.TensorSpec([image_size, image_size, 3], tf.float32),
            tf.TensorSpec([], tf.bool),
        ),
    )


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

    def _answer(self, images, valid):
        logits = self.forward(images)
        probabilities = tf.nn.softmax(logits) * tf.cast(valid, tf.float32)[:, None]
        top_probabilities, top_ids = tf.math.top_k(probabilities, k=self.top_k)
        top_ids = tf.where(valid[:, None], tf.cast(top_ids, tf.int64), tf.constant(-1, tf.int64))
        outputs = {
            "probabilities": probabilities,
            "top_k_class_ids": top_ids,
            "top_k_probabilities": top_probabilities,
            "valid": valid,
        }
        if self.class_names is not None:
            names = tf.gather(self.class_names, tf.maximum(top_ids, 0))
            outputs["top_k_class_names"] = tf.where(valid[:, None], names, "")
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        """JPEG/PNG/GIF/BMP bytes -> probabilities, top-k ids/probabilities/names, validity."""
        images, valid = decode_images(image_bytes, self.image_size, self.max_pixels)
        return self._answer(images, valid)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def predict_images(self, images):
        """Float images in [0, 1], any size -> the same outputs as `serve_bytes`."""
        images = tf.image.resize(images, [self.image_size, self.image_size])
        return self._answer(images, tf.ones(tf.shape(images)[:1], tf.bool))


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
    }
    with atomic_path(target, overwrite=overwrite, what="Serving version") as temporary:
        tf.saved_model.save(module, temporary, signatures=signatures)
    return target
