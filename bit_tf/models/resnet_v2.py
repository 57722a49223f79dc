"""The ResNetV2 builder: BiT models by shape (`resnet_v2`); by name or file in `create`.

Only `keras` and `keras.ops` are used here: the models run on the TensorFlow and JAX backends.
The names, depths and heads are data in `bit_tf.models.registry`.

Example:
    >>> model = resnet_v2(50, width_factor=1, num_classes=10)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from bit_tf.models.bit_model import BitModel
from bit_tf.models.layers import (
    NORMALIZATIONS,
    PreActBasic,
    PreActBottleneck,
    make_convolution,
    make_normalization,
)
from bit_tf.models.registry import BASIC_DEPTHS, UNITS_PER_BLOCK


def resolve_dtype_policy(dtype: str | keras.DTypePolicy | None) -> keras.DTypePolicy:
    """The Keras dtype policy named by `dtype`; None gives Keras' global policy.

    Example:
        >>> resolve_dtype_policy("mixed_bfloat16").compute_dtype
        'bfloat16'
    """
    if dtype is None:
        return keras.config.dtype_policy()
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown dtype policy {dtype!r}: use a Keras policy name such as 'float32' or "
            "'mixed_bfloat16', or a keras.DTypePolicy."
        ) from error


def resnet_v2(
    depth: int | None = 50,
    *,
    units_per_block: Sequence[int] | None = None,
    width_factor: int = 1,
    num_classes: int | None = 1000,
    input_shape: tuple = (None, None, 3),
    normalization: str = "group",
    weight_standardization: bool = True,
    unit: str | None = None,
    name: str = "resnet_v2",
    dtype: str | keras.DTypePolicy | None = None,
) -> keras.Model:
    """Builds a BiT ResNetV2 as a functional Keras model.

    The model takes float images in [0, 1] (NHWC, any size) and rescales them to [-1, 1].
    The stem is a 7x7/2 convolution, padding 1 and a 3x3/2 max pool ('valid'); then four
    blocks of pre-activation units, the first unit of blocks 2-4 carrying stride 2; then
    GN -> ReLU -> global average pool -> a zero-initialised Dense head.

    Args:
        depth: 18, 26, 34, 50, 101 or 152; ignored when `units_per_block` is given.
        units_per_block: explicit units of the four blocks, e.g. (1, 1, 1, 1).
        width_factor: multiplies every channel count (BiT's are 1 to 4).
        num_classes: size of the head; None returns the pre-logit feature vector.
        input_shape: (height, width, 3); a height or width of None takes any size.
        normalization: "group" (BiT), "batch", "noisy_batch" or "none".
        weight_standardization: standardize convolution kernels (BiT: True).
        unit: "bottleneck" or "basic"; by default basic for depths 18 and 34.
        name: the Keras model name.
        dtype: the dtype policy of every layer, e.g. "mixed_bfloat16" (weights in float32,
            computation in bfloat16: faster on CPUs with AMX or AVX512-BF16 and on GPUs);
            None for Keras' global policy. The pooling and the head keep the policy's variable
            dtype, so the features and logits of a mixed model are float32.

    Example:
        >>> model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
        >>> model(np.zeros((1, 64, 64, 3), "float32")).shape
        (1, 10)
    """
    # NumPy integers (a class count from labels.max() + 1) are counts as Python's are.
    width_factor, num_classes = (
        int(value) if isinstance(value, np.integer) else value
        for value in (width_factor, num_classes)
    )
    units_per_block, unit = _checked_architecture(
        depth, units_per_block, width_factor, num_classes, normalization, unit, input_shape
    )
    policy = resolve_dtype_policy(dtype)
    images = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus_one_one", dtype=policy)(images)
    x = _root(x, 64 * width_factor, weight_standardization, policy)
    unit_class = PreActBottleneck if unit == "bottleneck" else PreActBasic
    unit_options = {
        "normalization": normalization,
        "weight_standardization": weight_standardization,
    }
    x = _blocks(x, units_per_block, 64 * width_factor, unit_class, unit_options, policy)
    outputs = _head(x, num_classes, normalization, policy)
    return BitModel(images, outputs, name=name)


def _checked_architecture(
    depth, units_per_block, width_factor, num_classes, normalization, unit, input_shape
) -> tuple[tuple[int, ...], str]:
    """(units per block, unit kind) of `resnet_v2`'s arguments; a ValueError names a bad one."""
    explicit_units = units_per_block is not None
    if not explicit_units:
        if depth not in UNITS_PER_BLOCK:
            raise ValueError(
                f"Unsupported depth {depth!r}; choose one of {sorted(UNITS_PER_BLOCK)} "
                "or pass units_per_block."
            )
        units_per_block = UNITS_PER_BLOCK[depth]
    units_per_block = tuple(int(units) for units in units_per_block)
    if not units_per_block or min(units_per_block) < 1:
        raise ValueError(f"units_per_block must be positive counts, got {units_per_block!r}.")
    if not isinstance(width_factor, int) or isinstance(width_factor, bool) or width_factor < 1:
        raise ValueError(f"width_factor must be a positive integer, got {width_factor!r}.")
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}."
        )
    if unit is None:
        unit = "basic" if (not explicit_units and depth in BASIC_DEPTHS) else "bottleneck"
    if unit not in ("basic", "bottleneck"):
        raise ValueError(f"unit must be 'basic' or 'bottleneck', got {unit!r}.")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}.")
    return units_per_block, unit


def _root(x, channels: int, weight_standardization: bool, policy):
    """The stem: a 7x7/2 convolution (padding 3), then a 3x3/2 max pool (padding 1, 'valid')."""
    x = keras.layers.ZeroPadding2D(3, name="root_pad", dtype=policy)(x)
    x = make_convolution(
        channels,
        7,
        strides=2,
        weight_standardization=weight_standardization,
        name="root_conv",
        dtype=policy,
    )(x)
    x = keras.layers.ZeroPadding2D(1, name="root_pool_pad", dtype=policy)(x)
    pool = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="root_pool", dtype=policy)
    return pool(x)


def _blocks(x, units_per_block, root_channels: int, unit_class, unit_options: dict, policy):
    """The four blocks of pre-activation units; block b has root_channels * 2^b channels and
    its first unit (blocks 2-4) strides by 2."""
    for block_index, units in enumerate(units_per_block):
        channels = root_channels * 2**block_index
        for unit_index in range(units):
            strides = 2 if (block_index > 0 and unit_index == 0) else 1
            layer_name = f"block{block_index + 1}_unit{unit_index + 1:02d}"
            x = unit_class(channels, strides, name=layer_name, dtype=policy, **unit_options)(x)
    return x


def _head(x, num_classes: int | None, normalization: str, policy):
    """Normalization, ReLU, global average pooling (the pre-logits) and a zero-initialised Dense
    head (none for `num_classes=None`)."""
    pre_head_norm = make_normalization(normalization, name="pre_head_norm", dtype=policy)
    if pre_head_norm is not None:
        x = pre_head_norm(x)
    x = keras.layers.ReLU(name="pre_head_relu", dtype=policy)(x)
    # The features and the head keep the policy's variable dtype (float32 for mixed policies):
    # the pooled features and the logits come out as float32, as Keras advises for outputs.
    outputs = keras.layers.GlobalAveragePooling2D(name="pre_logits", dtype=policy.variable_dtype)(x)
    if num_classes is None:
        return outputs
    return keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        name="head",
        dtype=policy.variable_dtype,
    )(outputs)


def pre_logits_model(model: keras.Model) -> keras.Model:
    """A bit_tf model without its head: the model itself if it has none, else a model over the
    same layers (and weights) up to its pre-logits.

    Example:
        >>> pre_logits_model(create_model("BiT-S-R50x1")).output_shape
        (None, 2048)
    """
    names = [layer.name for layer in model.layers]
    if "head" not in names or "pre_logits" not in names:
        return model
    return keras.Model(model.inputs, model.get_layer("pre_logits").output, name=model.name)
