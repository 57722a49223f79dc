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
    # The reloaded model predicts XLA-compiled too, so both sides run the same kernels.
    assert loaded.jit_compile and model.jit_compile
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_only_float32_models_predict_with_xla_until_compile_decides(tmp_path):
    mixed = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, dtype="mixed_bfloat16")
    assert not mixed.jit_compile
    path = str(tmp_path / "mixed.keras")
    mixed.save(path)
    assert not keras.saving.load_model(path).jit_compile
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    model.compile(loss="mse", jit_compile=False)
    assert not model.jit_compile
