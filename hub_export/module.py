"""TF-Hub modules of BiT: TF2 Reusable SavedModels like the published `bit/m-r50x1` collection.

A module has `__call__(images, training=False)` on float32 `[batch, height, width, 3]` images
in [0, 1] of any size (uint8 and uint16 images are accepted too, and divided by 255 and 65535
in the graph; float images are not checked there, so pixel values in 0-255 must be divided by
255 first), the attributes `variables`, `trainable_variables` and
`regularization_losses`, and a `serving_default` signature. A "feature_vector" module returns
the pre-logits `[batch, 2048 * width]`; a "classification" module returns the logits. The
variables carry the official BiT checkpoint names, so `bit_tf.from_hub` rebuilds a Keras model.

Example:
    >>> import bit_tf, hub_export
    >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=None, weights="BiT-M-R50x1")
    >>> hub_export.export_module(model, "exports/bit_m-r50x1", kind="feature_vector")
    >>> module = tensorflow_hub.load("exports/bit_m-r50x1")
    >>> features = module(images)           # [batch, 2048]
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf

from bit_tf.models.resnet_v2 import pre_logits_model
from bit_tf.training.atomic import atomic_path, join
from hub_export.tracing import OfficialForward, unit_scale_images

KINDS = ("feature_vector", "classification")
METADATA_FILE = "bit_tf_module.json"
IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
#: The image dtypes a module's `__call__` takes: float32 in [0, 1], uint8 and uint16 pixels.
CALL_SPECS = tuple(
    tf.TensorSpec([None, None, None, 3], dtype, name="images")
    for dtype in (tf.float32, tf.uint8, tf.uint16)
)
OUTPUT_KEYS = {"feature_vector": "feature_vector", "classification": "logits"}


def _check_kind(kind: str, forward: OfficialForward | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown module kind {kind!r}; choose one of {KINDS}.")
    if kind == "classification" and forward is not None and not forward.has_head:
        raise ValueError(
            "kind='classification' needs a model with a head, but this model ends at the "
            "pre-logits (num_classes=None). Export kind='feature_vector', or build the model "
            "with num_classes."
        )


class _Root(tf.Module):
    """A tf.Module whose `variables` & co. are plain attributes (Reusable SavedModel API)."""

    variables = None
    trainable_variables = None


def build_module(model: keras.Model, kind: str = "feature_vector") -> tf.Module:
    """Builds the trackable object that `export_module` saves (useful to save it yourself).

    Example:
        >>> module = build_module(model, "classification")
        >>> module(images).shape
        TensorShape([2, 10])
    """
    _check_kind(kind)
    if kind == "feature_vector":  # like the published feature vectors: no head variables
        model = pre_logits_model(model)
    forward = OfficialForward(model, trainable=True)
    _check_kind(kind, forward)

    @tf.function(input_signature=[IMAGES_SPEC])
    def forward_images(images):  # one trace of the forward pass, which every function calls
        return forward(images)

    @tf.function
    def call(images, training=False):
        del training  # GroupNorm and weight standardization act the same in training.
        return forward_images(unit_scale_images(images, "a BiT hub module"))

    @tf.function(input_signature=[IMAGES_SPEC])
    def serve(images):
        return {OUTPUT_KEYS[kind]: call(images, training=False)}

    root = _Root()
    root.forward = forward
    root.__call__ = call
    # The Reusable SavedModel attributes, in the official key order.
    root.variables = list(forward.weights.values())
    root.trainable_variables = [v for v in root.variables if v.trainable]
    root.regularization_losses = []
    root.serving_default = serve
    for spec in CALL_SPECS:
        for training in (False, True):
            call.get_concrete_function(spec, training=training)
    return root


def export_module(
    model: keras.Model,
    export_dir: str,
    kind: str = "feature_vector",
    overwrite: bool = False,
) -> str:
    """Writes a BiT model as a TF2 Reusable SavedModel (a TF-Hub module), atomically.

    The module is written under a temporary sibling name and renamed onto `export_dir` when
    complete; a process killed half-way leaves nothing at `export_dir`.

    Args:
        model: a bit_tf model (`create_model` / `resnet_v2`), with GroupNorm.
        export_dir: local folder or `tf.io.gfile` URL (gs://...), which must not exist
            unless `overwrite`.
        kind: "feature_vector" (pre-logits) or "classification" (logits; needs a head). A
            classifier's `class_names` (`bit_tf.BitModel`) go into the module's metadata
            (`read_metadata`), and from there into its model card.
        overwrite: replace an existing `export_dir`.

    Returns:
        `export_dir`.

    Raises:
        hub_export.TargetExistsError: `export_dir` exists and `overwrite` is False.
        ValueError: unknown `kind`, or "classification" for a model without a head.

    Example:
        >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=1000,
        ...                             weights="BiT-M-R50x1-ILSVRC2012")
        >>> export_module(model, "exports/bit_m-r50x1_ilsvrc2012", kind="classification")
    """
    root = build_module(model, kind)
    signatures = {"serving_default": root.serving_default.get_concrete_function()}
    with atomic_path(export_dir, overwrite=overwrite, what="Export folder") as temporary:
        tf.saved_model.save(root, temporary, signatures=signatures)
        metadata = {
            "format": "bit_tf hub module",
            "kind": kind,
            "model_name": model.name,
            "output_key": OUTPUT_KEYS[kind],
            **{key: value for key, value in root.forward.layout.items()},
        }
        class_names = getattr(model, "class_names", None)  # a BitModel's, when it has them
        if kind == "classification" and class_names is not None:
            metadata["class_names"] = list(class_names)
        with tf.io.gfile.GFile(join(temporary, METADATA_FILE), "w") as stream:
            json.dump(metadata, stream, indent=2)
    return export_dir


def read_metadata(module_dir: str) -> dict:
    """The `bit_tf_module.json` written beside a module by this package ({} if absent).

    Example:
        >>> read_metadata("exports/bit_m-r50x1")["kind"]
        'feature_vector'
    """
    path = join(module_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as stream:
        return json.load(stream)
