"""The BiT layers: weight standardization, GroupNorm settings, pre-activation units.

Runs on whichever Keras backend is active (tests/test_jax_backend.py reruns it on JAX).
"""

import os

import keras
import numpy as np
import pytest

from bit_tf.models.layers import (
    GroupNormalization,
    PreActBasic,
    PreActBottleneck,
    StandardizedConv2D,
    make_normalization,
)


def test_backend_is_the_one_asked_for():
    assert keras.config.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_standardized_conv_matches_the_seed_formula():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 9, 7, 5)).astype("float32")
    conv = StandardizedConv2D(6, 3, padding="valid")
    conv.build(images.shape)
    kernel = rng.normal(loc=0.3, scale=2.0, size=(3, 3, 5, 6)).astype("float32")
    conv.kernel.assign(kernel)

    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    variance = kernel.var(axis=(0, 1, 2), keepdims=True)
    standardized = (kernel - mean) / np.sqrt(variance + 1e-10)
    plain = keras.layers.Conv2D(6, 3, padding="valid", use_bias=False)
    plain.build(images.shape)
    plain.kernel.assign(standardized)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(conv(images)),
        keras.ops.convert_to_numpy(plain(images)),
        rtol=1e-5,
        atol=1e-5,
    )
    per_output = keras.ops.convert_to_numpy(conv.standardized_kernel()).reshape(-1, 6)
    np.testing.assert_allclose(per_output.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(per_output.std(axis=0), 1.0, atol=1e-5)
    assert conv.bias is None


@pytest.mark.parametrize(
    "size, stride, padding, pixels",
    [
        (1, 1, "valid", (4, 4)),
        (1, 1, "valid", (3, 5)),
        (1, 1, "valid", (8, 8)),
        (1, 1, "valid", (16, 16)),
        (3, 1, "same", (2, 2)),
        (3, 1, "same", (4, 4)),
        (3, 1, "same", (3, 5)),
        (3, 1, "same", (8, 8)),
        (3, 2, "valid", (10, 10)),
        (3, 2, "valid", (9, 11)),
        (3, 2, "valid", (18, 18)),
        (1, 2, "valid", (8, 8)),
        (1, 2, "valid", (7, 9)),
        (1, 2, "same", (7, 8)),
        (1, 2, "valid", (32, 32)),
    ],
)
def test_convolutions_on_few_output_pixels_give_the_convolution_and_its_gradients(
    size, stride, padding, pixels
):
    """On TensorFlow, 1x1 convolutions with <= 8x8 output pixels and 3x3 ones with <= 4x4 run
    as matrix products (layers.py), strided or not."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, *pixels, 48)).astype("float32")
    kernel = rng.normal(loc=0.1, size=(size, size, 48, 40)).astype("float32")
    conv = StandardizedConv2D(40, size, strides=stride, padding=padding)
    conv.build(images.shape)
    conv.kernel.assign(kernel)
    standardized = (kernel - kernel.mean(axis=(0, 1, 2))) / kernel.std(axis=(0, 1, 2))
    margin = size // 2 if padding == "same" else 0
    padded = np.pad(images, [(0, 0), (margin, margin), (margin, margin), (0, 0)])
    out_height, out_width = ((extent - size) // stride + 1 for extent in padded.shape[1:3])
    expected = sum(
        np.einsum(
            "nhwi,io->nhwo",
            padded[
                :,
                row : row + stride * (out_height - 1) + 1 : stride,
                column : column + stride * (out_width - 1) + 1 : stride,
            ],
            standardized[row, column],
        )
        for row in range(size)
        for column in range(size)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(conv(images)), expected, rtol=1e-4, atol=1e-4
    )
    if keras.config.backend() != "tensorflow":
        return
    import tensorflow as tf

    from bit_tf import kernels

    as_product = out_height * out_width <= {1: 64, 3: 16}[size]
    inputs = tf.constant(images)
    upstream = tf.constant(rng.normal(size=(3, out_height, out_width, 40)).astype("float32"))
    gradients = []
    for fused in (True, False):  # off: the keras.ops reference, the convolution among them
        with kernels.configured(fused=fused), tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = conv(inputs)
        gradients.append(tape.gradient(outputs, [inputs, conv.kernel], upstream))
    for ours, theirs in zip(*gradients, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    graph = tf.function(conv).get_concrete_function(inputs).graph
    operations = {operation.type for operation in graph.get_operations()}
    assert ("MatMul" in operations) is as_product
    assert ("Conv2D" in operations) is not as_product


def test_group_normalization_uses_bit_settings():
    layer = GroupNormalization()
    assert (layer.groups, layer.epsilon) == (32, 1e-5)
    assert keras.layers.GroupNormalization().epsilon == 1e-3  # why the subclass exists
    values = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 4, 4, 64)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(values)).reshape(2, 16, 32, 2)
    np.testing.assert_allclose(out.mean(axis=(1, 3)), 0.0, atol=1e-4)


@pytest.mark.parametrize(
    ("strides", "in_channels", "has_projection", "out_hw"),
    [(1, 256, False, (8, 8)), (1, 64, True, (8, 8)), (2, 256, True, (4, 4))],
)
def test_bottleneck_shapes_and_projection(strides, in_channels, has_projection, out_hw):
    unit = PreActBottleneck(64, strides)
    out = unit(np.zeros((1, 8, 8, in_channels), "float32"))
    assert tuple(out.shape) == (1, *out_hw, 256)
    assert (unit.projection is not None) == has_projection
    assert unit.conv_b.strides == (strides, strides)  # the stride sits on the 3x3
    assert unit.conv_a.strides == (1, 1)


def test_bottleneck_projection_takes_the_preactivated_input():
    # With an identity-free shortcut, a unit whose residual branch is zero outputs
    # proj(relu(gn(x))), never proj(x).
    unit = PreActBottleneck(32, strides=1)
    inputs = np.random.default_rng(2).normal(size=(1, 5, 5, 64)).astype("float32")
    unit.build(inputs.shape)
    unit.conv_c.kernel.assign(np.zeros(unit.conv_c.kernel.shape, "float32"))
    # A zero kernel standardizes to zero (0 / sqrt(0 + eps)), so the branch adds nothing.
    preactivated = np.maximum(keras.ops.convert_to_numpy(unit.norm_a(inputs)), 0)
    expected = keras.ops.convert_to_numpy(unit.projection(preactivated))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(unit(inputs)), expected, atol=1e-5)


def test_basic_unit_shapes():
    unit = PreActBasic(64, strides=2)
    assert tuple(unit(np.zeros((2, 9, 9, 32), "float32")).shape) == (2, 5, 5, 64)
    assert unit.conv_a.strides == (2, 2)
    assert PreActBasic(32)(np.zeros((1, 4, 4, 32), "float32")).shape[-1] == 32


@pytest.mark.parametrize(
    "layer",
    [
        StandardizedConv2D(8, 3, strides=2, epsilon=1e-8),
        GroupNormalization(groups=8),
        PreActBottleneck(32, 2),
        PreActBasic(32, 2, normalization="batch", weight_standardization=False),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_round_trip_through_config(layer):
    inputs = np.random.default_rng(3).normal(size=(2, 8, 8, 32)).astype("float32")
    expected = keras.ops.convert_to_numpy(layer(inputs))
    config = keras.saving.serialize_keras_object(layer)
    assert config["module"] == "bit_tf.models.layers" or config["registered_name"].startswith(
        "bit_tf>"
    )
    clone = keras.saving.deserialize_keras_object(config)
    if not clone.built:
        clone.build(inputs.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(inputs)), expected, atol=1e-6)


def test_unknown_normalization_is_named():
    with pytest.raises(ValueError, match="'layer'"):
        make_normalization("layer")
    with pytest.raises(ValueError, match="strides must be 1 or 2, got 3"):
        PreActBottleneck(8, strides=3)
