"""BitModel.predict: the same outputs as keras.Model.predict, without tf.data for arrays."""

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.bit_model import BitModel


@pytest.fixture(scope="module")
def model():
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    rng = np.random.default_rng(0)
    model.get_layer("head").kernel.assign(rng.normal(0, 0.1, (2048, 3)).astype("float32"))
    return model


def test_builders_return_bit_models(model):
    assert isinstance(model, BitModel)
    assert isinstance(bit_tf.create_model("BiT-S-R50x1", num_classes=2), BitModel)


@pytest.mark.parametrize("count, batch_size", [(7, 3), (4, None), (1, 16)])
def test_predict_on_arrays_equals_keras_predict(model, count, batch_size):
    images = np.random.default_rng(count).uniform(size=(count, 32, 32, 3)).astype("float32")
    ours = model.predict(images, batch_size=batch_size, verbose=0)
    theirs = keras.Model.predict(model, images, batch_size=batch_size, verbose=0)
    assert ours.shape == (count, 3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    tensor = keras.ops.convert_to_tensor(images)
    np.testing.assert_allclose(model.predict(tensor, verbose=0), ours, rtol=1e-5, atol=1e-5)


def test_predict_shows_progress_and_rejects_a_bad_batch_size(model, capsys):
    images = np.zeros((5, 32, 32, 3), "float32")
    model.predict(images, batch_size=2, verbose=1)
    assert "3/3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.predict(images, batch_size=0)


def test_datasets_take_the_keras_path_and_saving_keeps_the_class(model, tmp_path):
    import tensorflow as tf

    images = np.random.default_rng(1).uniform(size=(6, 32, 32, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
    np.testing.assert_allclose(
        model.predict(dataset, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BitModel)
    # The reloaded model predicts the same way (XLA-compiled or on the native kernels, on
    # TensorFlow), so both sides run the same kernels.
    assert loaded._predict_mode() == model._predict_mode()
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5
    )


def _predict_is_xla_compiled(model) -> bool:
    """Whether the predict function Keras built for `model` calls its whole step XLA-compiled.

    Only the call of Keras' step function counts: the fused kernels inside the step are
    XLA-compiled functions of their own either way (bit_tf.fused).
    """
    model.make_predict_function()
    shape = [1, *(32 if size is None else size for size in model.input_shape[1:])]
    graph = model.predict_function.get_concrete_function([keras.ops.zeros(shape)]).graph
    return any(
        "one_step_on_data" in node.attr["f"].func.name and node.attr["_XlaMustCompile"].b
        for node in graph.as_graph_def().node
        if "f" in node.attr and "_XlaMustCompile" in node.attr
    )


def _predict_runs(model) -> str:
    """How the predict function Keras built for `model` runs: "xla" (its step XLA-compiled),
    "native" (bit_tf.native's GroupNorm op in its graph) or "plain"."""
    if _predict_is_xla_compiled(model):
        return "xla"
    shape = [1, *(32 if size is None else size for size in model.input_shape[1:])]
    graph = model.predict_function.get_concrete_function([keras.ops.zeros(shape)]).graph
    definition = graph.as_graph_def()
    types = {node.op for node in definition.node}
    for function in definition.library.function:
        types |= {node.op for node in function.node_def}
    return "native" if "BitGroupNorm" in types else "plain"


TENSORFLOW_ONLY = pytest.mark.skipif(
    keras.config.backend() != "tensorflow", reason="predict_jit_compile's 'auto' acts on TensorFlow"
)


def _auto_float32() -> str:
    """What "auto" means for float32 models here: the native kernels where they build."""
    from bit_tf import fused

    return "native" if fused.native_kernels_available("float32") else "xla"


@TENSORFLOW_ONLY
def test_a_float32_model_predicts_compiled_however_it_was_compiled_and_reloaded(tmp_path):
    """XLA-compiled, or on the native kernels where they build, not Keras' plain graph."""
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    auto = _auto_float32()
    assert model.predict_jit_compile == "auto" and _predict_runs(model) == auto
    # Keras' "auto" means no XLA on CPUs, for training: predict keeps its own way all the same.
    model.compile(optimizer="sgd", loss="mse")
    assert not model.jit_compile and _predict_runs(model) == auto
    path = str(tmp_path / "compiled.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert not loaded.jit_compile and _predict_runs(loaded) == auto
    # Training's setting is left as it was after building the predict function.
    assert not loaded.jit_compile
    loaded.predict_jit_compile = True
    assert _predict_runs(loaded) == "xla"
    loaded.predict_jit_compile = False
    assert _predict_runs(loaded) == "plain"
    with pytest.raises(ValueError, match="predict_jit_compile must be .* got 'yes'"):
        loaded.predict_jit_compile = "yes"


@TENSORFLOW_ONLY
def test_bfloat16_models_predict_without_xla_unless_asked():
    mixed = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, dtype="mixed_bfloat16")
    assert _predict_runs(mixed) == ("native" if _auto_float32() == "native" else "plain")
    mixed.predict_jit_compile = True
    assert _predict_is_xla_compiled(mixed)
    mixed.predict_jit_compile = "auto"
    mixed.compile(loss="mse", jit_compile=True)
    assert _predict_is_xla_compiled(mixed)


@TENSORFLOW_ONLY
def test_an_explicit_setting_decides_for_predict_alone():
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    model.compile(loss="mse", jit_compile=True)
    model.predict_jit_compile = False
    assert model.jit_compile and not _predict_is_xla_compiled(model)


@TENSORFLOW_ONLY
def test_auto_leaves_xla_off_where_keras_would():
    class NoXla(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_jit = False

        def call(self, inputs):
            return inputs

    inputs = keras.Input((8, 8, 3))
    unsupported = BitModel(inputs, NoXla()(inputs))
    assert not _predict_is_xla_compiled(unsupported)
    np.testing.assert_array_equal(unsupported.predict(np.ones((2, 8, 8, 3), "float32")), 1.0)
    # A bfloat16 model nested as a layer counts as bfloat16.
    mixed = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, dtype="mixed_bfloat16")
    outer = BitModel(inputs, mixed(inputs))
    assert not _predict_is_xla_compiled(outer)


@TENSORFLOW_ONLY
def test_training_sees_its_own_setting_while_another_thread_builds_predict():
    import threading

    from bit_tf import bit_model

    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    model.compile(loss="mse")
    seen = {}
    # What make_predict_function sets on its thread while Keras builds the predict function.
    bit_model._BUILDING.model, bit_model._BUILDING.with_xla = model, True
    try:
        seen["builder"] = model.jit_compile
        other = threading.Thread(target=lambda: seen.update(other=model.jit_compile))
        other.start()
        other.join(30)
    finally:
        bit_model._BUILDING.model = None
    assert seen == {"builder": True, "other": False}
    assert not model.jit_compile and _predict_runs(model) == _auto_float32()


@TENSORFLOW_ONLY
def test_auto_predicts_on_the_native_kernels_where_they_build_else_with_xla():
    from bit_tf import native

    assert native.library() is not None, "the native kernels did not build (see the log)"
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    images = np.random.default_rng(2).uniform(size=(3, 40, 36, 3)).astype("float32")
    assert _predict_runs(model) == "native"
    on_native_kernels = model.predict(images, verbose=0)
    model.predict_jit_compile = True
    assert _predict_runs(model) == "xla"
    compiled = model.predict(images, verbose=0)
    scale = np.abs(compiled).max()
    np.testing.assert_allclose(on_native_kernels / scale, compiled / scale, atol=1e-5)
    with native.native_kernels(False):
        model.predict_jit_compile = "auto"
        assert _predict_runs(model) == "xla"
    # Calling the model (as exports do) traces no native op.
    import tensorflow as tf

    function = tf.function(lambda images: model(images, training=False))
    graph = function.get_concrete_function(tf.TensorSpec([1, 32, 32, 3])).graph.as_graph_def()
    types = {node.op for node in graph.node}
    types |= {node.op for function in graph.library.function for node in function.node_def}
    assert "BitGroupNorm" not in types and "BitStandardizeKernel" not in types
