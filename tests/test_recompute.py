"""Pre-activations recomputed in the backward pass (bit_tf.recompute): same gradients, less
memory."""

import os

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("bit_tf.recompute is for the TensorFlow backend", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bit_tf  # noqa: E402
from bit_tf import layers, native, recompute  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def native_kernels():
    assert native.library() is not None, "the native kernels did not build (see the log)"


def _small_model(dtype=None, **options):
    keras.utils.set_random_seed(0)
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=5, dtype=dtype, **options)


def _training_step(model):
    def step(images):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = tf.reduce_sum(logits * tf.range(1.0, 6.0))
        return loss, tape.gradient(loss, model.trainable_variables)

    return step


def _gradients(model, images, *, recomputing: bool):
    with recompute.recomputation(recomputing):
        loss, gradients = tf.function(_training_step(model))(images)
    return loss.numpy(), [gradient.numpy() for gradient in gradients]


def _op_count(graph, op_type: str) -> int:
    nodes = [op.type for op in graph.get_operations()]
    for inner in graph._functions.values():
        nodes += [node.op for node in inner.cached_definition.node_def]
    return nodes.count(op_type)


@pytest.mark.parametrize("kernel_pixels", [0, 10**9], ids=["kernels_recomputed", "kernels_kept"])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_recomputed_gradients_equal_the_kept_ones(dtype, kernel_pixels, monkeypatch):
    monkeypatch.setattr(recompute, "KERNEL_RECOMPUTATION_MIN_PIXELS", kernel_pixels)
    # Projections, strided 3x3 convolutions (padded), matrix-product convolutions at 2x3 pixels.
    model = _small_model(dtype)
    images = tf.random.stateless_uniform([2, 36, 44, 3], seed=[1, 2])
    loss, gradients = _gradients(model, images, recomputing=True)
    kept_loss, kept_gradients = _gradients(model, images, recomputing=False)
    assert loss == kept_loss
    for variable, gradient, kept in zip(
        model.trainable_variables, gradients, kept_gradients, strict=True
    ):
        np.testing.assert_allclose(gradient, kept, rtol=1e-6, atol=1e-7, err_msg=variable.path)


def test_the_backward_pass_normalizes_again_and_holds_less_memory(monkeypatch):
    monkeypatch.setattr(recompute, "KERNEL_RECOMPUTATION_MIN_PIXELS", 0)
    model = _small_model()
    # Large enough images that activations, not gradients, make most of the step's peak.
    images = tf.random.stateless_uniform([16, 128, 128, 3], seed=[3, 4])
    peaks, counts = {}, {}
    for recomputing in (True, False):
        with recompute.recomputation(recomputing):
            step = tf.function(_training_step(model))
            counts[recomputing] = _op_count(
                step.get_concrete_function(images).graph, "BitGroupNorm"
            )
            step(images)  # traced and run once before measuring
            peaks[recomputing] = min(_allocator_peak(step, images) for _ in range(2))
    # 13 GroupNorms: 12 in the units, each traced again for the backward pass, and the last.
    assert counts == {True: 25, False: 13}
    # Graph optimizations must not merge the recomputation back into the forward pass. (The
    # peaks move with the order the executor's threads run ops in: 0.65-0.75 of the kept
    # tensors' peak here, with another such process running beside; merged, about 1.)
    assert peaks[True] < 0.85 * peaks[False], peaks


def _allocator_peak(step, images) -> int:
    """Bytes TensorFlow's CPU allocator held at most during `step(images)`, over before it."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step(images)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_kernels_are_standardized_again_only_for_enough_output_pixels():
    conv_1x1, strided_3x3 = (
        layers.StandardizedConv2D(8, 1),
        layers.StandardizedConv2D(8, 3, strides=2),
    )
    assert recompute.KERNEL_RECOMPUTATION_MIN_PIXELS == 256
    assert recompute.recomputes_kernel(conv_1x1, (16, 4, 4, 64))  # R50x1 at 128: 16 x 4x4
    assert not recompute.recomputes_kernel(conv_1x1, (32, 2, 2, 64))  # the main job's block 3
    assert recompute.recomputes_kernel(strided_3x3, (16, 8, 8, 64))  # to 4x4
    assert recompute.recomputes_kernel(strided_3x3, (16, 7, 7, 64))  # to 4x4 too
    assert not recompute.recomputes_kernel(strided_3x3, (15, 8, 8, 64))  # 240 pixels
    assert recompute.recomputes_kernel(conv_1x1, (None, 2, 2, 64))  # batch unknown: memory first


def test_kept_kernels_are_standardized_once():
    model = _small_model()
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[7, 8])  # 2 x 8x8 pixels at most
    counts = {}
    for recomputing in (True, False):
        with recompute.recomputation(recomputing):
            graph = tf.function(_training_step(model)).get_concrete_function(images).graph
            counts[recomputing] = _op_count(graph, "BitStandardizeKernel")
    assert counts[True] == counts[False] == 17  # 4 units of 3, 4 projections, the stem


def test_it_applies_only_to_graphs_of_training_on_the_native_kernels():
    norm, conv = layers.GroupNormalization(), layers.StandardizedConv2D(8, 1)
    norm.build((1, 4, 4, 32))
    conv.build((1, 4, 4, 32))
    inputs = tf.ones([1, 4, 4, 32])

    def decision(**function_options):
        @tf.function(**function_options)
        def trace(inputs):
            with tf.GradientTape():
                return tf.constant(recompute.recomputes(norm, inputs, [conv]))

        return bool(trace(inputs))

    assert decision()
    assert not decision(jit_compile=True)
    with tf.GradientTape():
        assert not recompute.recomputes(norm, inputs, [conv])  # eager
    assert not tf.function(lambda x: recompute.recomputes(norm, x, [conv]))(inputs)  # no tape
    with native.native_kernels(False):
        assert not decision()
    with recompute.recomputation(False):
        assert not decision()
    assert recompute.use_recomputation(True)
    plain = keras.layers.Conv2D(8, 1, use_bias=False)
    plain.build((1, 4, 4, 32))
    batch_norm = keras.layers.BatchNormalization()
    batch_norm.build((1, 4, 4, 32))

    @tf.function
    def others(inputs):
        with tf.GradientTape():
            return [
                recompute.recomputes(norm, inputs, [plain]),
                recompute.recomputes(batch_norm, inputs, [conv]),
                recompute.recomputes(None, inputs, [conv]),
            ]

    assert not any(others(inputs))


def test_units_without_group_norm_or_standardization_train_as_before():
    for options in ({"normalization": "batch"}, {"weight_standardization": False}):
        model = _small_model(**options)
        images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6])
        loss, gradients = _gradients(model, images, recomputing=True)
        kept_loss, kept_gradients = _gradients(model, images, recomputing=False)
        assert loss == kept_loss
        for gradient, kept in zip(gradients, kept_gradients, strict=True):
            np.testing.assert_array_equal(gradient, kept)


def test_recomputed_takes_gradients_of_every_consumer_and_argument():
    x = tf.random.stateless_normal([3, 4], seed=[7, 8])
    w1 = tf.random.stateless_normal([4, 2], seed=[9, 10])
    w2 = tf.random.stateless_normal([4, 5], seed=[11, 12])
    scale = tf.constant(1.5)

    def activate(x, scale):
        return tf.nn.relu(x * scale)

    @tf.function
    def gradients(use_recomputed: bool):
        with tf.GradientTape() as tape:
            tape.watch([x, w1, w2, scale])
            if use_recomputed:
                first, second = recompute.recomputed(
                    activate, x, (scale,), [(tf.matmul, (w1,)), (tf.matmul, (w2,))]
                )
            else:
                activated = activate(x, scale)
                first, second = activated @ w1, activated @ w2
            loss = tf.reduce_sum(first**2) + tf.reduce_sum(tf.sin(second))
        return tape.gradient(loss, [x, w1, w2, scale])

    for got, expected in zip(gradients(True), gradients(False), strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


def test_a_consumer_left_unused_gets_a_zero_gradient():
    x = tf.random.stateless_normal([3, 4], seed=[13, 14])
    w1, w2 = tf.ones([4, 2]), tf.ones([4, 5])

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            tape.watch([x, w1, w2])
            first, _ = recompute.recomputed(
                tf.nn.relu, x, (), [(tf.matmul, (w1,)), (tf.matmul, (w2,))]
            )
            loss = tf.reduce_sum(first)
        return tape.gradient(loss, [x, w1, w2])

    d_x, d_w1, d_w2 = gradient()
    np.testing.assert_allclose(d_x.numpy(), np.where(x.numpy() > 0, 2.0, 0.0))
    np.testing.assert_allclose(d_w1.numpy(), np.maximum(x.numpy(), 0).sum(0)[:, None] * [1, 1])
    np.testing.assert_array_equal(d_w2.numpy(), np.zeros([4, 5]))
