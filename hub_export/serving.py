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

Files are decoded, turned upright by their EXIF orientation and resized to `image_size` x
`image_size` inside the graph by `hub_export.image_decoding` (see there for the formats and for
what happens to damaged files: an item that cannot be decoded gets `valid` false, probabilities
0, top-k ids -1, names empty and a `reason`, and fails only itself). A request is answered in
batches of at most `batch_size` images, one after the other (a `tf.while_loop` in the graph),
so a server's memory is that of one batch, whatever the size of the request; the answers are
those of the whole request at once.

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

from bit_tf.finetune import hyperrule
from bit_tf.models.inference import fold_weight_standardization as fold_weights
from bit_tf.training.atomic import atomic_path, join
from hub_export.image_decoding import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    declared_sizes,
    decode_images,
    decode_images_with_reasons,
)
from hub_export.tracing import OfficialForward, unit_scale_images

DEFAULT_TOP_K = 5
#: The most images a serving export decodes and runs through the model at once.
DEFAULT_BATCH_SIZE = 16


class ServingModule(tf.Module):
    """The object `export_serving` saves: preprocessing, the BiT forward pass, the top-k.

    Its arguments are `export_serving`'s; every signature answers its input `batch_size`
    images at a time.

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
        batch_size: int = DEFAULT_BATCH_SIZE,
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.top_k = min(int(top_k), num_classes)
        # The one trace of the forward pass, which every signature calls.
        self._forward_images = tf.function(
            self.forward.__call__,
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
        )

    def _in_batches(self, count, answer_batch):
        """`answer_batch(start, stop)` -> (logits, valid, reasons) of the items [start, stop), for
        one batch of at most `batch_size` items after the other, concatenated: the memory of
        one batch, whatever the request's size."""
        batch_size = tf.constant(self.batch_size, tf.int32)
        batches = (count + batch_size - 1) // batch_size
        specs = (
            tf.TensorSpec([None, self.forward.layout["num_classes"]], tf.float32),
            tf.TensorSpec([None], tf.bool),
            tf.TensorSpec([None], tf.string),
        )
        parts = tuple(
            tf.TensorArray(spec.dtype, size=batches, infer_shape=False, element_shape=spec.shape)
            for spec in specs
        )

        def answer(index, parts):
            start = index * batch_size
            outputs = answer_batch(start, tf.minimum(start + batch_size, count))
            return index + 1, tuple(
                part.write(index, output) for part, output in zip(parts, outputs, strict=True)
            )

        _, parts = tf.while_loop(
            lambda index, _: index < batches, answer, (0, parts), parallel_iterations=1
        )
        return tuple(part.concat() for part in parts)

    def _answer(self, logits, valid, reasons):
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

        def answer_batch(start, stop):
            images, valid, reasons = decode_images_with_reasons(
                image_bytes[start:stop], self.image_size, self.max_pixels
            )
            return self._forward_images(images), valid, reasons

        return self._answer(*self._in_batches(tf.shape(image_bytes)[0], answer_batch))

    def _answer_arrays(self, images):
        def answer_batch(start, stop):
            batch = unit_scale_images(images[start:stop])
            batch = tf.image.resize(batch, [self.image_size, self.image_size])
            count = tf.shape(batch)[:1]
            return self._forward_images(batch), tf.ones(count, tf.bool), tf.fill(count, "")

        return self._answer(*self._in_batches(tf.shape(images)[0], answer_batch))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def predict_images(self, images):
        """Float images in [0, 1], any size -> the same outputs as `serve_bytes`."""
        return self._answer_arrays(images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def predict_uint8_images(self, images):
        """uint8 pixels (0-255), any size -> the same outputs as `serve_bytes`."""
        return self._answer_arrays(images)


def hyperrule_image_size(model_name: str | None = None, large_images: bool = True) -> int:
    """The crop size the BiT-HyperRule fine-tunes at, as
    `bit_tf.finetune.hyperrule.get_resolution` says.

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
    batch_size: int = DEFAULT_BATCH_SIZE,
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
            `bit_tf.finetune.hyperrule.get_resolution`: 128 for images under 96x96 pixels, else 384,
            or 480 for R152x4). Defaults to the model's fixed input size.
        top_k: how many classes to list per image.
        fold_weight_standardization: standardize the kernels once here and use plain
            convolutions (same outputs to 1e-5, faster; the export can no longer be trained).
        max_pixels: images declaring more pixels are flagged invalid without being decoded.
        overwrite: replace an existing version.
        batch_size: the most images decoded and run through the model at once; a larger
            request is answered batch after batch (the same answers), so that its memory is
            that of one batch.

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
        batch_size=batch_size,
    )
    signatures = {
        "serving_default": module.serve_bytes.get_concrete_function(),
        "predict_images": module.predict_images.get_concrete_function(),
        "predict_uint8_images": module.predict_uint8_images.get_concrete_function(),
    }
    with atomic_path(target, overwrite=overwrite, what="Serving version") as temporary:
        tf.saved_model.save(module, temporary, signatures=signatures)
    return target


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TOP_K",
    "IMAGE_FORMATS",
    "ServingModule",
    "declared_sizes",
    "decode_images",
    "decode_images_with_reasons",
    "export_serving",
    "hyperrule_image_size",
    "serving_version_dir",
]
