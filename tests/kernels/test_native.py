"""The C++ kernels (bit_tf.kernels.native): where they are used, their errors, and their build.

Their values and gradients against the reference are in test_kernels.py (each test runs with
the C++ and with the XLA kernels).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("bit_tf.kernels.native is for the TensorFlow backend", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bit_tf  # noqa: E402
from bit_tf import kernels  # noqa: E402
from bit_tf.kernels import native  # noqa: E402
from bit_tf.kernels import tensorflow as tf_kernels  # noqa: E402

NATIVE_OPS = {
    "BitGroupNorm",
    "BitGroupNormGrad",
    "BitStandardizeKernel",
    "BitStandardizeKernelGrad",
}


@pytest.fixture(scope="module")
def operations():
    library = native.library()
    assert library is not None, "the native kernels did not build (see the log)"
    return library


def _op_types(function, *arguments) -> set:
    graph = function.get_concrete_function(*arguments).graph
    types = {op.type for op in graph.get_operations()}
    for inner in graph._functions.values():  # the custom gradients and compiled kernels
        types |= {node.op for node in inner.cached_definition.node_def}
    return types


def _small_model():
    keras.utils.set_random_seed(0)
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)


def test_a_training_step_uses_them_and_inference_does_not(operations):
    model = _small_model()
    images = tf.random.uniform([2, 32, 32, 3])

    @tf.function
    def training_step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def inference(images):
        return model(images, training=False)

    @tf.function(jit_compile=True)
    def compiled_training_step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    assert NATIVE_OPS <= _op_types(training_step, images)
    assert not NATIVE_OPS & _op_types(inference, images)
    assert not NATIVE_OPS & _op_types(compiled_training_step, images)
    with kernels.configured(native=False):
        assert not NATIVE_OPS & _op_types(tf.function(training_step.python_function), images)
    assert kernels.settings().native


def test_bfloat16_group_norm_runs_on_them_and_float16_keeps_the_xla_kernel(operations):
    with tf.GradientTape():
        assert tf_kernels.native_operations(tf.bfloat16) is operations
        assert tf_kernels.native_operations(tf.float16) is None


@pytest.mark.parametrize("relu", [False, True])
def test_bfloat16_group_norm_equals_the_xla_kernel_to_bfloat16_rounding(operations, relu):
    rng = np.random.default_rng(7)
    shape = (3, 9, 7, 64)
    x = tf.cast(rng.normal(1.0, 3.0, size=shape).astype("float32"), tf.bfloat16)
    upstream = tf.cast(rng.normal(size=shape).astype("float32"), tf.bfloat16)
    gamma = tf.constant(rng.uniform(0.5, 1.5, size=64).astype("float32"))
    beta = tf.constant(rng.normal(size=64).astype("float32"))
    results = {}
    for kind in ("native", "xla"):
        with kernels.configured(native=kind == "native"), tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y = tf_kernels.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=relu)
        results[kind] = [y, *tape.gradient(y, [x, gamma, beta], output_gradients=upstream)]
    for name, got, want in zip(("y", "x", "gamma", "beta"), *results.values(), strict=True):
        assert got.dtype == want.dtype, name
        got, want = tf.cast(got, tf.float32).numpy(), tf.cast(want, tf.float32).numpy()
        scale = np.abs(want).max()
        # Both compute in float32 and round to bfloat16 (8 bits of mantissa) at the end.
        np.testing.assert_allclose(got / scale, want / scale, atol=2**-7, err_msg=name)


def test_an_exported_saved_model_holds_only_standard_ops(operations, tmp_path):
    model = _small_model()
    model.export(str(tmp_path / "exported"), format="tf_saved_model", verbose=False)
    saved = tmp_path / "exported" / "saved_model.pb"
    assert saved.exists()
    assert b"BitGroupNorm" not in saved.read_bytes()
    assert b"BitStandardizeKernel" not in saved.read_bytes()


def test_the_kernels_and_the_xla_kernels_give_the_same_training_step(operations):
    images = np.random.default_rng(1).uniform(size=(2, 40, 36, 3)).astype("float32")
    gradients = {}
    for kind in ("native", "xla"):
        with kernels.configured(native=kind == "native"):
            model = _small_model()
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(images, training=True)))
            gradients[kind] = tape.gradient(loss, model.trainable_variables)
    for got, want in zip(gradients["native"], gradients["xla"], strict=True):
        scale = max(float(tf.reduce_max(tf.abs(want))), 1e-12)
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=2e-5)


def test_bad_inputs_get_errors_that_name_the_values(operations):
    def group_norm(x, gamma, beta):
        return operations.bit_group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=True)

    with pytest.raises(tf.errors.InvalidArgumentError, match="48 channels do not split into 32"):
        group_norm(tf.ones([1, 2, 2, 48]), tf.ones([48]), tf.zeros([48]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"per channel \(64\), got 32 and 64"):
        group_norm(tf.ones([1, 2, 2, 64]), tf.ones([32]), tf.zeros([64]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="gamma has 32 values"):
        operations.bit_group_norm_grad(
            *[tf.ones([1, 2, 2, 64])] * 2,
            tf.ones([32]),
            tf.zeros([64]),
            tf.zeros([1, 32, 1]),
            tf.ones([1, 32, 1]),
            groups=32,
            relu=True,
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[3,3,4,8\] and kernel \[1,1,4,8\]"):
        operations.bit_standardize_kernel_grad(
            tf.ones([3, 3, 4, 8]), tf.ones([1, 1, 4, 8]), tf.zeros([1, 8]), tf.ones([1, 8])
        )


def test_empty_batches_pass(operations):
    y, mean, inverse = operations.bit_group_norm(
        tf.ones([0, 4, 4, 32]), tf.ones([32]), tf.zeros([32]), groups=32, epsilon=1e-5, relu=False
    )
    assert y.shape == (0, 4, 4, 32) and mean.shape == (0, 32, 1) and inverse.shape == (0, 32, 1)


def test_a_failed_build_says_why(tmp_path):
    with pytest.raises(native.NativeBuildError, match="exit 1"):
        native.build(tmp_path, compiler_command="false")
    assert not list(tmp_path.iterdir()), "a failed build leaves no partial library behind"


def test_the_build_is_cached_by_its_key(operations):
    key = native.build_key(native.compiler())
    library = native.cache_directory() / "native" / key / native.LIBRARY_NAME
    assert library.exists()
    assert key != native.build_key(native.compiler() + " -DDIFFERENT")


@pytest.mark.slow
def test_without_a_compiler_training_falls_back_to_the_xla_kernels(tmp_path):
    """A real process with a compiler that fails: a warning, then the same training as before."""
    script = textwrap.dedent(
        """
        import logging, numpy as np, keras, bit_tf
        from bit_tf.kernels import native
        logging.basicConfig(level=logging.WARNING)
        assert native.library() is None
        model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
        model.compile(optimizer="sgd", loss="mse")
        images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
        loss = model.train_on_batch(images, np.zeros((2, 3), "float32"))
        assert np.isfinite(loss), loss
        print("trained")
        """
    )
    environment = {
        **os.environ,
        "CXX": "false",
        "BIT_TF_CACHE_DIR": str(tmp_path),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained" in result.stdout
    assert "the native kernels are off (XLA's instead)" in result.stderr
    assert "exit 1" in result.stderr
