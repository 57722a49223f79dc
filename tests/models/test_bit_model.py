"""BitModel.predict: the same outputs as keras.Model.predict, without tf.data for arrays; its
class names travel through saving and loading."""

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.models.bit_model import BitModel

from numerics import SAME_MODEL_TOLERANCE, relative_error


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


def test_predict_on_zero_images_returns_zero_rows(model):
    for images in (
        np.zeros((0, 32, 32, 3), "float32"),
        np.zeros((0, 20, 24, 3), "uint8"),
        keras.ops.zeros((0, 16, 16, 3)),
    ):
        for outputs in (model.predict(images, verbose=0), model.predict_on_batch(images)):
            assert outputs.shape == (0, 3) and outputs.dtype == np.float32
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    assert backbone.predict(np.zeros((0, 32, 32, 3), "float32"), verbose=0).shape == (0, 2048)


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
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5
    )


def _predict_runs(model) -> str:
    """How the predict function Keras built for `model` runs: "xla" (its step XLA-compiled),
    "native" (bit_tf's C++ GroupNorm op in its graph) or "plain"."""
    model.make_predict_function(force=True)
    shape = [1, *(32 if size is None else size for size in model.input_shape[1:])]
    graph = model.predict_function.get_concrete_function([keras.ops.zeros(shape)]).graph
    definition = graph.as_graph_def()
    if any(
        "one_step_on_data" in node.attr["f"].func.name and node.attr["_XlaMustCompile"].b
        for node in definition.node
        if "f" in node.attr and "_XlaMustCompile" in node.attr
    ):
        return "xla"
    types = {node.op for node in definition.node}
    for function in definition.library.function:
        types |= {node.op for node in function.node_def}
    return "native" if "BitGroupNorm" in types else "plain"


TENSORFLOW_ONLY = pytest.mark.skipif(
    keras.config.backend() != "tensorflow", reason="the C++ kernels run on TensorFlow"
)


@TENSORFLOW_ONLY
def test_class_names_survive_saving_and_must_fit_the_head(tmp_path):
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    assert model.class_names is None
    model.class_names = ["daisy", "rose", "tulip"]
    path = str(tmp_path / "named.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, BitModel) and loaded.class_names == ("daisy", "rose", "tulip")
    assert loaded.get_config()["class_names"] == ["daisy", "rose", "tulip"]
    with pytest.raises(ValueError, match="2 class names given for model .* has 3 classes"):
        model.class_names = ["daisy", "rose"]
    with pytest.raises(TypeError, match="the string 'daisy'"):
        model.class_names = "daisy"
    model.class_names = None
    model.save(path)
    assert keras.models.load_model(path).class_names is None


def test_predict_runs_on_the_native_kernels_and_keras_jit_compile_turns_xla_on(tmp_path):
    """Float32 and bfloat16 models predict on the C++ kernels on a CPU, also when reloaded;
    Keras' own public `jit_compile` switch gives XLA; plain calls (as exports make) trace no
    C++ op."""
    import tensorflow as tf

    from bit_tf import kernels
    from bit_tf.kernels import native

    assert native.library() is not None, "the native kernels did not build (see the log)"
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    images = np.random.default_rng(2).uniform(size=(3, 40, 36, 3)).astype("float32")
    assert _predict_runs(model) == "native"
    on_native_kernels = model.predict(images, verbose=0)
    model.jit_compile = True
    assert _predict_runs(model) == "xla"
    compiled = model.predict(images, verbose=0)
    scale = np.abs(compiled).max()
    np.testing.assert_allclose(on_native_kernels / scale, compiled / scale, atol=1e-5)
    model.jit_compile = False
    with kernels.configured(native=False):
        assert _predict_runs(model) == "plain"
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert _predict_runs(keras.saving.load_model(path)) == "native"
    mixed = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, dtype="mixed_bfloat16")
    assert _predict_runs(mixed) == "native"

    function = tf.function(lambda images: model(images, training=False))
    graph = function.get_concrete_function(tf.TensorSpec([1, 32, 32, 3])).graph.as_graph_def()
    types = {node.op for node in graph.node}
    types |= {node.op for function in graph.library.function for node in function.node_def}
    assert "BitGroupNorm" not in types and "BitStandardizeKernel" not in types


def test_uint8_pixels_are_divided_by_255_and_0_255_floats_are_refused(model):
    import tensorflow as tf

    pixels = np.random.default_rng(5).integers(0, 256, (5, 32, 32, 3), np.uint8)
    floats = pixels.astype("float32") / 255.0
    expected = model.predict(floats, batch_size=2, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(pixels).batch(2)
    for outputs in (
        model(pixels),
        model.predict(pixels, batch_size=2, verbose=0),
        model.predict_on_batch(pixels),
        model.predict(dataset, verbose=0),  # Keras' own path: converted in the compiled graph
        tf.function(lambda images: model(images, training=False))(tf.constant(pixels)),
        model(pixels.astype(np.uint16) * 257),  # 16-bit pixels: divided by 65535
    ):
        assert relative_error(outputs, expected) < SAME_MODEL_TOLERANCE
    for run in (
        lambda: model(floats * 255.0),
        lambda: model.predict(floats * 255.0, batch_size=2, verbose=0),
        lambda: model.predict_on_batch(floats * 255.0),
        lambda: model(tf.constant(floats * 255.0)),
    ):
        with pytest.raises(ValueError, match=r"largest value here is 255: .* Divide them by 255"):
            run()
    with pytest.raises(ValueError, match="uint8 .* got dtype int32"):
        model.predict(pixels.astype(np.int32), verbose=0)
    # Slightly above 1 (resampling overshoot) is not refused.
    model(np.minimum(floats * 1.2, 1.2))


def test_predict_names_an_array_that_is_not_a_batch_of_images():
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=3)
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"add the batch axis: image\[np.newaxis\]"):
        model.predict(images[0], verbose=0)
    with pytest.raises(ValueError, match="channels first"):
        model.predict(images.transpose(0, 3, 1, 2), verbose=0)
    with pytest.raises(ValueError, match=r"got an array of shape \(4, 16, 16, 1\)"):
        model.predict(images[..., :1], verbose=0)
    # Every batch's pixel scale is checked, not only the first's.
    scaled = np.concatenate([images[:2], images[2:] * 255])
    with pytest.raises(ValueError, match="look like pixel values in 0-255"):
        model.predict(scaled, batch_size=2, verbose=0)
    assert model.predict(images, batch_size=2, verbose=0).shape == (4, 3)


def test_counts_from_numpy_are_counts_and_booleans_are_not():
    assert bit_tf.resnet_v2(18, num_classes=np.int64(4)).output_shape == (None, 4)
    with pytest.raises(ValueError, match="got True"):
        bit_tf.resnet_v2(18, num_classes=True)
    assert bit_tf.evaluation.vtab.__name__ == "bit_tf.evaluation.vtab"  # on first use
