"""The fused TensorFlow kernels give what the unfused Keras ops give, values and gradients."""

import os

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("bit_tf.fused is for the TensorFlow backend", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bit_tf  # noqa: E402
from bit_tf import fused, native  # noqa: E402
from bit_tf.layers import GroupNormalization, StandardizedConv2D  # noqa: E402


def _reference_group_norm(x, gamma, beta, groups, epsilon, relu):
    """The formula with plain TF ops (two-pass moments), differentiated by autodiff."""
    batch, height, width, channels = x.shape
    grouped = tf.reshape(x, [batch, height, width, groups, channels // groups])
    mean, variance = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
    normalized = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + epsilon), x.shape)
    y = normalized * gamma + beta
    return tf.nn.relu(y) if relu else y


@pytest.fixture(params=["native", "xla"])
def kernels(request):
    """Runs a test with the native C++ kernels (bit_tf.native) and with the XLA ones."""
    if request.param == "native":
        assert native.library() is not None, "the native kernels did not build (see the log)"
    with native.native_kernels(request.param == "native"):
        yield request.param


def _values_and_gradients(function, *inputs, upstream):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = function(*inputs)
    return y, tape.gradient(y, inputs, output_gradients=upstream)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 64), (3, 8, 8, 32), (1, 2, 2, 128), (2, 9, 7, 96)])
def test_group_norm_matches_the_formula_and_its_gradient(shape, relu, kernels):
    rng = np.random.default_rng(sum(shape))
    x = tf.constant(rng.normal(2.0, 3.0, size=shape).astype("float32"))
    gamma = tf.constant(rng.uniform(0.5, 1.5, size=shape[-1]).astype("float32"))
    beta = tf.constant(rng.normal(size=shape[-1]).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def fused_function(x, gamma, beta):
        return fused.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=relu)

    def reference_function(x, gamma, beta):
        return _reference_group_norm(x, gamma, beta, 32, 1e-5, relu)

    got, got_gradients = _values_and_gradients(fused_function, x, gamma, beta, upstream=upstream)
    want, want_gradients = _values_and_gradients(
        reference_function, x, gamma, beta, upstream=upstream
    )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    for name, got_gradient, want_gradient in zip(
        ("x", "gamma", "beta"), got_gradients, want_gradients, strict=True
    ):
        scale = np.abs(want_gradient.numpy()).max()
        np.testing.assert_allclose(
            got_gradient.numpy() / scale, want_gradient.numpy() / scale, atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("shape", [(3, 3, 16, 8), (3, 3, 40, 40), (1, 1, 8, 3), (7, 7, 3, 64)])
def test_weight_standardization_matches_the_formula_and_its_gradient(shape, kernels):
    rng = np.random.default_rng(3)
    kernel = tf.constant(rng.normal(0.3, 2.0, size=shape).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def reference(kernel):
        mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
        return (kernel - mean) * tf.math.rsqrt(variance + 1e-10)

    got, (got_gradient,) = _values_and_gradients(
        lambda k: fused.standardize_kernel(k, epsilon=1e-10), kernel, upstream=upstream
    )
    want, (want_gradient,) = _values_and_gradients(reference, kernel, upstream=upstream)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_gradient.numpy(), want_gradient.numpy(), rtol=1e-4, atol=1e-5)


def test_layers_use_the_fused_kernels_and_keep_the_keras_results():
    """GroupNormalization and StandardizedConv2D equal their unfused Keras counterparts."""
    rng = np.random.default_rng(4)
    images = rng.normal(size=(2, 6, 6, 64)).astype("float32")
    ours = GroupNormalization()
    keras_layer = keras.layers.GroupNormalization(groups=32, epsilon=1e-5)
    for layer in (ours, keras_layer):
        layer.build(images.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, 64, dtype="float32"))
        layer.beta.assign(np.linspace(-1.0, 1.0, 64, dtype="float32"))
    np.testing.assert_allclose(ours(images), keras_layer(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ours.normalize_and_relu(images), tf.nn.relu(keras_layer(images)), rtol=1e-5, atol=1e-5
    )

    conv = StandardizedConv2D(8, 3)
    conv.build(images.shape)
    kernel = conv.kernel.numpy()
    mean, variance = kernel.mean(axis=(0, 1, 2)), kernel.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        conv.standardized_kernel(), (kernel - mean) / np.sqrt(variance + 1e-10), atol=1e-5
    )


def test_a_training_step_matches_the_unfused_model(kernels):
    """One SGD step of a small BiT with fused kernels equals the same step with Keras' ops."""
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(4, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(4) % 3, 3)

    def step(use_fused):
        assert bit_tf.layers._fused() is not None if use_fused else bit_tf.layers._fused() is None
        keras.utils.set_random_seed(0)
        model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
        model.get_layer("head").kernel.assign(rng.normal(0, 0.1, (2048, 3)).astype("float32"))
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
            loss = tf.reduce_mean(loss)
        gradients = tape.gradient(loss, model.trainable_variables)
        assert all(gradient is not None for gradient in gradients)
        return gradients

    rng_state = rng.bit_generator.state
    fused_gradients = step(True)
    rng.bit_generator.state = rng_state
    previous = bit_tf.layers.use_fused_kernels(False)  # the backend-generic path
    try:
        plain_gradients = step(False)
    finally:
        bit_tf.layers.use_fused_kernels(previous)
    for got, want in zip(fused_gradients, plain_gradients, strict=True):
        scale = max(np.abs(want.numpy()).max(), 1e-12)
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=2e-5)
