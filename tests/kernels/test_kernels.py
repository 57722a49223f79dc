"""bit_tf.kernels on TensorFlow: every fast kernel gives the reference's values and gradients,
the settings, and which implementation runs where."""

import os
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("bit_tf.kernels.tensorflow is for the TensorFlow backend", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bit_tf  # noqa: E402
from bit_tf import kernels  # noqa: E402
from bit_tf.kernels import native, reference  # noqa: E402
from bit_tf.kernels import tensorflow as tf_kernels  # noqa: E402
from bit_tf.models.layers import GroupNormalization, StandardizedConv2D  # noqa: E402


def _reference_group_norm(x, gamma, beta, groups, epsilon, relu):
    """The keras.ops reference, differentiated by autodiff."""
    return reference.group_norm(x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu)


def test_the_reference_is_the_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(2, 3, 5, 64)).astype("float32")
    gamma, beta = rng.uniform(size=64).astype("float32"), rng.normal(size=64).astype("float32")
    grouped = x.astype("float64").reshape(2, 3, 5, 32, 2)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    variance = grouped.var(axis=(1, 2, 4), keepdims=True)
    want = ((grouped - mean) / np.sqrt(variance + 1e-5)).reshape(x.shape) * gamma + beta
    got = reference.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=True)
    np.testing.assert_allclose(got, np.maximum(want, 0), atol=1e-5)
    kernel = rng.normal(0.3, 2.0, size=(3, 3, 8, 4))
    want = (kernel - kernel.mean(axis=(0, 1, 2))) / np.sqrt(kernel.var(axis=(0, 1, 2)) + 1e-10)
    np.testing.assert_allclose(reference.standardize_kernel(kernel, epsilon=1e-10), want, atol=1e-5)


def test_settings_are_one_object_with_environment_variables():
    assert kernels.settings() == kernels.KernelSettings(fused=True, native=True, recompute=True)
    previous = kernels.configure(native=False)
    try:
        assert previous.native and not kernels.settings().native
        with kernels.configured(recompute=False, native=True) as inside:
            assert inside == kernels.KernelSettings(fused=True, native=True, recompute=False)
        assert kernels.settings() == kernels.KernelSettings(native=False)
    finally:
        kernels.configure(native=previous.native)
    with pytest.raises(TypeError, match="'xla'"):
        kernels.configure(xla=False)
    script = "from bit_tf import kernels; print(kernels.settings())"
    environment = {**os.environ, "BIT_TF_RECOMPUTE": "0", "BIT_TF_FUSED_KERNELS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment
    )
    assert "KernelSettings(fused=False, native=True, recompute=False)" in result.stdout, result


def test_the_implementation_follows_the_settings_and_the_purpose():
    assert kernels.implementation() is tf_kernels
    with kernels.configured(fused=False):
        assert kernels.implementation() is reference
    with kernels.exporting(trainable=True):
        assert kernels.implementation() is reference
    with kernels.exporting(trainable=False):
        assert kernels.implementation() is tf_kernels


@pytest.mark.parametrize(
    "shape, kernel_shape, strides, padding",
    [
        ((2, 4, 4, 16), (1, 1, 16, 8), 1, "valid"),
        ((2, 4, 4, 16), (3, 3, 16, 8), 1, "same"),
        ((2, 9, 9, 16), (3, 3, 16, 8), 2, "valid"),
        ((2, 8, 8, 16), (1, 1, 16, 8), 2, "valid"),
        ((2, 16, 16, 16), (3, 3, 16, 8), 1, "same"),  # too many pixels: the convolution
    ],
)
def test_convolutions_match_the_reference(shape, kernel_shape, strides, padding):
    rng = np.random.default_rng(2)
    inputs = tf.constant(rng.normal(size=shape).astype("float32"))
    kernel = tf.constant(rng.normal(size=kernel_shape).astype("float32"))
    outputs = {}
    for name, module in (("fast", tf_kernels), ("reference", reference)):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            y = module.convolution(inputs, kernel, strides=strides, padding=padding)
            loss = tf.reduce_sum(tf.square(y))
        outputs[name] = [y, *tape.gradient(loss, [inputs, kernel])]
    for got, want in zip(outputs["fast"], outputs["reference"], strict=True):
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=1e-5)


@pytest.fixture(params=["native", "xla"])
def fast_kernels(request):
    """Runs a test with the C++ kernels (bit_tf.kernels.native) and with the XLA ones."""
    if request.param == "native":
        assert native.library() is not None, "the native kernels did not build (see the log)"
    with kernels.configured(native=request.param == "native"):
        yield request.param


def _values_and_gradients(function, *inputs, upstream):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = function(*inputs)
    return y, tape.gradient(y, inputs, output_gradients=upstream)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 64), (3, 8, 8, 32), (1, 2, 2, 128), (2, 9, 7, 96)])
def test_group_norm_matches_the_formula_and_its_gradient(shape, relu, fast_kernels):
    rng = np.random.default_rng(sum(shape))
    x = tf.constant(rng.normal(2.0, 3.0, size=shape).astype("float32"))
    gamma = tf.constant(rng.uniform(0.5, 1.5, size=shape[-1]).astype("float32"))
    beta = tf.constant(rng.normal(size=shape[-1]).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def fast_function(x, gamma, beta):
        return tf_kernels.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=relu)

    def reference_function(x, gamma, beta):
        return _reference_group_norm(x, gamma, beta, 32, 1e-5, relu)

    got, got_gradients = _values_and_gradients(fast_function, x, gamma, beta, upstream=upstream)
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
def test_weight_standardization_matches_the_formula_and_its_gradient(shape, fast_kernels):
    rng = np.random.default_rng(3)
    kernel = tf.constant(rng.normal(0.3, 2.0, size=shape).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def reference(kernel):
        mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
        return (kernel - mean) * tf.math.rsqrt(variance + 1e-10)

    got, (got_gradient,) = _values_and_gradients(
        lambda k: tf_kernels.standardize_kernel(k, epsilon=1e-10), kernel, upstream=upstream
    )
    want, (want_gradient,) = _values_and_gradients(reference, kernel, upstream=upstream)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_gradient.numpy(), want_gradient.numpy(), rtol=1e-4, atol=1e-5)


def test_layers_keep_the_keras_results():
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
    with_relu = GroupNormalization(relu=True)
    with_relu.build(images.shape)
    with_relu.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        with_relu(images), tf.nn.relu(keras_layer(images)), rtol=1e-5, atol=1e-5
    )

    conv = StandardizedConv2D(8, 3)
    conv.build(images.shape)
    kernel = conv.kernel.numpy()
    mean, variance = kernel.mean(axis=(0, 1, 2)), kernel.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        conv.standardized_kernel(), (kernel - mean) / np.sqrt(variance + 1e-10), atol=1e-5
    )


def test_a_training_step_matches_the_reference(fast_kernels):
    """One SGD step of a small BiT on the fast kernels equals the same step on the reference."""
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(4, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(4) % 3, 3)

    def step(use_fused):
        expected = tf_kernels if use_fused else reference
        assert kernels.implementation() is expected
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
    with kernels.configured(fused=False):  # the keras.ops reference
        plain_gradients = step(False)
    for got, want in zip(fused_gradients, plain_gradients, strict=True):
        scale = max(np.abs(want.numpy()).max(), 1e-12)
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=2e-5)
