"""SavedModels for TensorFlow Serving: encoded images in, probabilities and top-k classes out.

`export_serving` writes `<base_dir>/<version>/`, the layout TensorFlow Serving watches. The
graph needs no Python of ours. Signatures:

- `serving_default`: input `image_bytes`, a string batch `[batch]` of JPEG or PNG files
  (any sizes, mixed). Outputs:
  `probabilities` float32 `[batch, classes]`, `top_k_class_ids` int64 `[batch, k]`,
  `top_k_probabilities` float32 `[batch, k]`, `top_k_class_names` string `[batch, k]` (only
  when class names are known), and `valid` bool `[batch]`.
- `predict_images`: input `images`, float32 `[batch, height, width, 3]` in [0, 1]; the same
  outputs (`valid` all true).

Images are decoded to RGB (grayscale, palette and RGBA are converted; alpha is dropped) and
resized to `image_size` x `image_size` (the crop the model was fine-tuned at) inside the
graph, as BiT's evaluation pipeline does.

Bad bytes. Before decoding, each item's header is read in the graph. An item that is empty,
neither JPEG nor PNG, declares zero or more than `max_pixels` pixels, or is a PNG too short
to hold its header, is flagged per item: `valid` is false, its probabilities are 0, its
top-k ids are -1 and names empty; the other items of the batch are answered normally, and
nothing is decoded for it (no memory is spent on enormous declared sizes). An item that
starts like a JPEG or PNG but is damaged inside (an unreadable JPEG header, a corrupt or
truncated body) makes the decoder fail the whole request with `INVALID_ARGUMENT`, as
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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_HEADER_BYTES = 24  # signature (8), IHDR length and type (8), width (4), height (4)


def _png_size(data):
    padded = tf.strings.join([data, tf.constant(b"\0" * _PNG_HEADER_BYTES)])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
    width = raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]
    height = raw[4] * 2**24 + raw[5] * 2**16 + raw[6] * 2**8 + raw[7]
    return height, width


def _jpeg_size(data):
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0], shape[1]


def _declared_size(data, is_png, is_jpeg):
    zero = tf.constant(0, tf.int64)
    return tf.case(
        [(is_png, lambda: _png_size(data)), (is_jpeg, lambda: _jpeg_size(data))],
        default=lambda: (zero, zero),
        exclusive=True,
    )


def _decode(data, is_png, image_size):
    image = tf.cond(
        is_png,
        lambda: tf.io.decode_png(data, channels=3),
        lambda: tf.io.decode_jpeg(data, channels=3),
    )
    resized = tf.image.resize(image, [image_size, image_size])  # uint8 in, float32 out
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def decode_images(image_bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decodes a string batch of JPEG/PNG files to float32 [batch, size, size, 3] + validity.

    See the module docstring for which items are flagged invalid and which fail the request.

    Example:
        >>> images, valid = decode_images(tf.constant([jpeg_bytes, b"junk"]), 128)
        >>> valid.numpy()
        array([ True, False])
    """

    def prepare(data):
        length = tf.strings.length(data)
        is_png = tf.logical_and(
            tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE), length >= _PNG_HEADER_BYTES
        )
        is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), JPEG_SIGNATURE)
        height, width = _declared_size(data, is_png, is_jpeg)
        valid = tf.logical_and(
            tf.logical_or(is_png, is_jpeg),
            tf.logical_and(
                tf.logical_and(height > 0, width > 0),
                # Divide rather than multiply: no overflow for any declared size.
                height <= max_pixels // tf.maximum(width, 1),
            ),
        )
        image = tf.cond(
            valid,
            lambda: _decode(data, is_png, image_size),
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
        """JPEG/PNG bytes -> probabilities, top-k ids/probabilities/names, validity."""
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
        class_names: one name per class, in class-id order (adds `top_k_class_names`).
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
