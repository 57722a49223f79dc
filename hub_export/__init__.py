"""Export BiT models: TF-Hub modules, TensorFlow Serving SavedModels, published archives.

`hub_export` builds on `bit_tf` (never the reverse) and needs TensorFlow.

Example:
    >>> import bit_tf, hub_export
    >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=None, weights="BiT-M-R50x1")
    >>> hub_export.export_module(model, "exports/bit_m-r50x1", kind="feature_vector")
    >>> hub_export.publish("exports/bit_m-r50x1", "gs://my-bucket/models", "bit/m-r50x1", 1)
    >>> hub_export.export_serving(classifier, "serving/flowers", version=1, image_size=128,
    ...                           class_names=["daisy", "rose", "tulip"])
"""

from bit_tf.models.hub import UnsafeArchiveError, extract_archive_safely
from bit_tf.training.atomic import TargetExistsError
from hub_export.image_decoding import DEFAULT_MAX_PIXELS, decode_images
from hub_export.model_card import model_card
from hub_export.module import KINDS, build_module, export_module, read_metadata
from hub_export.publish import publish, write_archive
from hub_export.serving import ServingModule, export_serving

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "KINDS",
    "ServingModule",
    "decode_images",
    "export_serving",
    "TargetExistsError",
    "UnsafeArchiveError",
    "build_module",
    "export_module",
    "extract_archive_safely",
    "model_card",
    "publish",
    "read_metadata",
    "write_archive",
]
