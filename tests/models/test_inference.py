"""fold_weight_standardization: an inference copy with plain kernels, the same function.

Runs on whichever Keras backend is active.
"""

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.models.inference import fold_weight_standardization
from bit_tf.models.resnet_v2 import resnet_v2

from numerics import PARITY_TOLERANCE, SAME_MODEL_TOLERANCE, relative_error


@pytest.fixture(scope="module")
def fixture_model(official_checkpoint):
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


def standardized_convolutions(model):
    return [
        layer for layer in model._flatten_layers() if isinstance(layer, bit_tf.StandardizedConv2D)
    ]


def test_the_folded_copy_matches_the_reference_with_plain_kernels(fixture_model, reference_outputs):
    folded = fold_weight_standardization(fixture_model)
    assert type(folded) is type(fixture_model)
    assert not standardized_convolutions(folded)
    convolutions = [
        layer for layer in folded._flatten_layers() if isinstance(layer, keras.layers.Conv2D)
    ]
    assert len(convolutions) == len(standardized_convolutions(fixture_model)) == 17
    # The folded kernels are the standardized ones: mean 0 and variance 1 per output channel.
    for layer in convolutions:
        kernel = keras.ops.convert_to_numpy(layer.kernel).reshape(-1, layer.filters)
        np.testing.assert_allclose(kernel.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(kernel.var(axis=0), 1, rtol=1e-4)

    images = reference_outputs["images"]
    logits = folded.predict(images, verbose=0)
    assert relative_error(logits, reference_outputs["logits"]) < PARITY_TOLERANCE
    assert relative_error(logits, fixture_model.predict(images, verbose=0)) < SAME_MODEL_TOLERANCE
    # The original is untouched and still standardizes.
    assert len(standardized_convolutions(fixture_model)) == 17
    assert relative_error(fixture_model(images), reference_outputs["logits"]) < PARITY_TOLERANCE


def test_the_copy_does_not_follow_later_changes_of_the_original():
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3)
    folded = fold_weight_standardization(model)
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    before = folded.predict(images, verbose=0)
    for variable in model.weights:
        variable.assign(variable.value * 2 + 1)
    np.testing.assert_array_equal(folded.predict(images, verbose=0), before)


def test_a_folded_feature_model_saves_and_reloads(tmp_path):
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    folded = fold_weight_standardization(model)
    images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    reloaded = keras.saving.load_model(path)
    assert not standardized_convolutions(reloaded)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_models_without_weight_standardization_come_back_equal():
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, weight_standardization=False)
    folded = fold_weight_standardization(model)
    for original, copy in zip(model.weights, folded.weights, strict=True):
        assert original.path == copy.path
        np.testing.assert_array_equal(np.asarray(original), np.asarray(copy))


def test_a_model_that_is_not_functional_is_refused():
    with pytest.raises(ValueError, match="functional Keras model.*Sequential"):
        fold_weight_standardization(keras.Sequential([bit_tf.StandardizedConv2D(4, 3)]))
