"""The paper's model: layers, the ResNetV2 builder, `BitModel`, the registry of names and
releases, official weights and their downloads, class names, input scale, inference folding,
the normalization ablations and TF-Hub layers.

The package itself is the builder's API (`bit_tf.models.create_model`, `bit_tf.models.resnet_v2`,
the registry's names), as the module `bit_tf.models` was before the package.

Example:
    >>> from bit_tf import models
    >>> model = models.create_model("BiT-S-R50x1", num_classes=10)
    >>> names = models.list_models()  # "BiT-M-R50x1", ...
"""

from __future__ import annotations

from bit_tf.models.bit_model import BitModel
from bit_tf.models.create import FROM_CHECKPOINT, create_model, from_checkpoint
from bit_tf.models.layers import (
    NORMALIZATIONS,
    PreActBasic,
    PreActBottleneck,
    make_convolution,
    make_normalization,
)
from bit_tf.models.registry import (
    BASIC_DEPTHS,
    UNITS_PER_BLOCK,
    UPSTREAM,
    WIDTH_FACTORS,
    architecture,
    default_num_classes,
    list_models,
    parse_model_name,
)
from bit_tf.models.resnet_v2 import pre_logits_model, resnet_v2, resolve_dtype_policy
from bit_tf.models.timm_weights import read_weights
from bit_tf.models.weights import assign_official_arrays, checkpoint_num_classes

__all__ = [
    "FROM_CHECKPOINT",
    "BASIC_DEPTHS",
    "NORMALIZATIONS",
    "UNITS_PER_BLOCK",
    "UPSTREAM",
    "WIDTH_FACTORS",
    "BitModel",
    "PreActBasic",
    "PreActBottleneck",
    "architecture",
    "assign_official_arrays",
    "checkpoint_num_classes",
    "create_model",
    "default_num_classes",
    "from_checkpoint",
    "list_models",
    "make_convolution",
    "make_normalization",
    "parse_model_name",
    "pre_logits_model",
    "read_weights",
    "resnet_v2",
    "resolve_dtype_policy",
]
