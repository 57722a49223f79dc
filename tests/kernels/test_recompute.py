"""Pre-activations recomputed in the backward pass (bit_tf.kernels.recompute): same gradients, less
memory."""

import os

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("bit_tf.kernels.recompute is for the TensorFlow backend", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bit_tf  # noqa: E402
from bit_tf import kernels  # noqa: E402
from bit_tf.kernels import native, recompute  # noqa: E402


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
    with kernels.configured(recompute=recomputing):
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
        with kernels.configured(recompute=recomputing):
            step = tf.function(_training_step(model))
            counts[recomputing] = _op_count(
                step.get_concrete_function(images).graph, "BitGroupNorm"
            )
            step(images)  # traced and run once before measuring
            peaks[recomputing] = min(_allocator_peak(step, images) for _ in range(3))
    # 13 GroupNorms: 12 in the units, each traced again for the backward pass of each of its
    # 16 convolutions (the first pre-activation of a unit feeds the projection too), and the
    # last.
    assert counts == {True: 29, False: 13}
    # Graph optimizations must not merge the recomputation back into the forward pass. (The
    # peaks move with the order the executor's threads run ops in: 0.65-0.75 of the kept
    # tensors' peak here, with another such process running beside; merged, about 1.)
    assert peaks[True] < 0.9 * peaks[False], peaks


def _allocator_peak(step, images) -> int:
    """Bytes TensorFlow's CPU allocator held at most during `step(images)`, over before it."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step(images)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_kernels_are_standardized_again_only_for_enough_output_pixels():
    assert recompute.KERNEL_RECOMPUTATION_MIN_PIXELS == 256
    assert recompute.recomputes_kernel(16, 4 * 4)  # R50x1 at 128: 16 x 4x4
    assert not recompute.recomputes_kernel(32, 2 * 2)  # the main job's block 3
    assert not recompute.recomputes_kernel(15, 4 * 4)  # 240 pixels
    assert recompute.recomputes_kernel(None, 2 * 2)  # batch unknown: memory first
    assert recompute.recomputes_kernel(16, None)


def test_kept_kernels_are_standardized_once():
    model = _small_model()
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[7, 8])  # 2 x 8x8 pixels at most
    counts = {}
    for recomputing in (True, False):
        with kernels.configured(recompute=recomputing):
            graph = tf.function(_training_step(model)).get_concrete_function(images).graph
            counts[recomputing] = _op_count(graph, "BitStandardizeKernel")
    assert counts[True] == counts[False] == 17  # 4 units of 3, 4 projections, the stem


def test_it_applies_only_to_training_graphs_on_the_native_kernels():
    model = _small_model()
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 3])

    def group_norms(**settings) -> int:
        with kernels.configured(**settings):
            graph = tf.function(_training_step(model)).get_concrete_function(images).graph
        return _op_count(graph, "BitGroupNorm")

    assert group_norms() == 29
    assert group_norms(recompute=False) == 13
    assert group_norms(native=False) == 0  # the XLA kernels: nothing recomputed
    inference = tf.function(lambda x: model(x, training=False)).get_concrete_function(images)
    assert _op_count(inference.graph, "BitGroupNorm") == 0


def test_sources_are_found_directly_and_through_zero_padding_only():
    @tf.function
    def found(x):
        activated = tf.nn.relu(x)
        recompute.remember(activated, tf.nn.relu, (x,))
        padded = tf.pad(activated, [[0, 0], [1, 1], [1, 1], [0, 0]])
        reflected = tf.pad(activated, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        ones = tf.pad(activated, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)
        sources = [recompute.source_of(t) for t in (activated, padded, reflected, ones, x)]
        return tf.constant([source is not None for source in sources]), tf.constant(
            sources[1].paddings
        )

    which, paddings = found(tf.ones([1, 3, 3, 2]))
    assert which.numpy().tolist() == [True, True, False, False, False]
    assert paddings.numpy().tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]


def test_units_without_group_norm_or_standardization_train_as_before():
    for options in ({"normalization": "batch"}, {"weight_standardization": False}):
        model = _small_model(**options)
        images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6])
        loss, gradients = _gradients(model, images, recomputing=True)
        kept_loss, kept_gradients = _gradients(model, images, recomputing=False)
        assert loss == kept_loss
        for gradient, kept in zip(gradients, kept_gradients, strict=True):
            np.testing.assert_array_equal(gradient, kept)


@pytest.mark.parametrize("recompute_kernel", [False, True])
def test_a_recomputed_convolution_takes_the_gradients_of_every_argument(recompute_kernel):
    x = tf.random.stateless_normal([2, 5, 5, 4], seed=[7, 8])
    kernel = tf.random.stateless_normal([3, 3, 4, 6], seed=[9, 10])
    scale = tf.constant(1.5)

    def activate(x, scale):
        return tf.nn.relu(x * scale)

    def standardize(kernel):
        return kernel * 2.0 + 1.0

    def convolve(activated, weight):
        return tf.nn.conv2d(activated, weight, 2, "VALID")

    @tf.function
    def gradients(use_recomputed: bool):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, scale])
            activated = tf.pad(activate(x, scale), [[0, 0], [1, 1], [1, 1], [0, 0]])
            if use_recomputed:
                source = recompute.Source(activate, (x, scale), [[0, 0], [1, 1], [1, 1], [0, 0]])
                y = recompute.recomputed_convolution(
                    source,
                    activated,
                    kernel,
                    standardize=standardize,
                    convolve=convolve,
                    recompute_kernel=recompute_kernel,
                )
            else:
                y = convolve(activated, standardize(kernel))
            loss = tf.reduce_sum(tf.sin(y))
        return loss, tape.gradient(loss, [x, kernel, scale])

    (loss, got), (want_loss, want) = gradients(True), gradients(False)
    assert loss.numpy() == want_loss.numpy()
    for got_gradient, want_gradient in zip(got, want, strict=True):
        np.testing.assert_allclose(got_gradient.numpy(), want_gradient.numpy(), rtol=1e-5)
