"""hub_export.export_module: Reusable SavedModels that load, match, rebuild and fine-tune."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

import bit_tf
import hub_export
from bit_tf.models.weights import CheckpointError

from numerics import SAME_MODEL_TOLERANCE, relative_error


@pytest.fixture(scope="module")
def classifier(official_checkpoint):
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


@pytest.fixture(scope="module")
def modules(classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("modules")
    return {
        kind: hub_export.export_module(classifier, str(folder / kind), kind=kind)
        for kind in hub_export.KINDS
    }


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(2, 45, 37, 3)).astype("float32")


def keras_output(classifier, images, kind):
    if kind == "classification":
        return classifier(images).numpy()
    backbone = keras.Model(classifier.input, classifier.get_layer("pre_logits").output)
    return backbone(images).numpy()


@pytest.mark.parametrize(
    "kind, loader", [("classification", hub.load), ("feature_vector", tf.saved_model.load)]
)
def test_module_matches_keras_model(modules, classifier, images, kind, loader):
    module = loader(modules[kind])
    outputs = module(images).numpy()
    expected = keras_output(classifier, images, kind)
    assert outputs.shape == ((2, 10) if kind == "classification" else (2, 2048))
    assert relative_error(outputs, expected) < 1e-5


def test_module_reproduces_the_reference_outputs(modules, reference_outputs):
    module = hub.load(modules["classification"])
    outputs = module(reference_outputs["images"], training=False).numpy()
    assert relative_error(outputs, reference_outputs["logits"]) < 1e-5
    features = hub.load(modules["feature_vector"])(reference_outputs["images"]).numpy()
    assert relative_error(features, reference_outputs["features"]) < 1e-5


def test_module_follows_the_reusable_saved_model_api(modules, classifier, images):
    module = tf.saved_model.load(modules["classification"])
    names = {variable.name.split(":")[0] for variable in module.variables}
    assert names == set(bit_tf.models.weights.official_variables(classifier))
    assert len(module.trainable_variables) == len(module.variables)
    assert list(module.regularization_losses) == []
    training_output = module(images, training=True).numpy()
    assert relative_error(training_output, module(images).numpy()) < 1e-6
    signature = module.signatures["serving_default"]
    served = signature(images=tf.constant(images))["logits"].numpy()
    assert relative_error(served, classifier(images).numpy()) < SAME_MODEL_TOLERANCE
    assert hub_export.read_metadata(modules["classification"])["kind"] == "classification"


@pytest.mark.parametrize("kind", hub_export.KINDS)
def test_from_hub_rebuilds_a_native_trainable_model(modules, classifier, images, kind):
    model = bit_tf.from_hub(modules[kind])
    assert isinstance(model, keras.Model)
    assert len(model.trainable_weights) == len(classifier.trainable_weights) - (
        0 if kind == "classification" else 2
    )
    # The same Keras layers with the same weights, both called eagerly: as close as that allows.
    assert relative_error(model(images).numpy(), keras_output(classifier, images, kind)) < 1e-5


def test_from_hub_reads_modules_with_official_names_written_by_others(
    official_checkpoint, tmp_path, images, classifier
):
    # A module in the layout of the published BiT collection, written without hub_export:
    # plain variables named by the official keys under a scope, and a __call__.
    arrays = bit_tf.models.weights.read_checkpoint(official_checkpoint)
    root = tf.Module()
    with tf.name_scope("module"):
        root.weights = [tf.Variable(value, name=key) for key, value in sorted(arrays.items())]
    root.f = tf.function(lambda images: tf.reduce_mean(images, axis=[1, 2, 3]))
    root.f.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.float32))
    tf.saved_model.save(root, str(tmp_path / "foreign"))
    assert root.weights[0].name.startswith("module/resnet/")
    model = bit_tf.from_hub(str(tmp_path / "foreign"))
    assert relative_error(model(images).numpy(), classifier(images).numpy()) < 1e-5


def test_from_hub_refuses_a_module_that_is_not_bit(tmp_path):
    root = tf.Module()
    root.kernel = tf.Variable(tf.ones([3, 3]), name="dense/kernel")
    tf.saved_model.save(root, str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="Not a BiT module"):
        bit_tf.from_hub(str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="neither an existing SavedModel folder"):
        bit_tf.from_hub(str(tmp_path / "missing"))


def test_export_refuses_existing_folder_and_classification_without_head(
    modules, classifier, tmp_path
):
    with pytest.raises(hub_export.TargetExistsError, match="already exists"):
        hub_export.export_module(classifier, modules["classification"], kind="classification")
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    with pytest.raises(ValueError, match="needs a model with a head"):
        hub_export.export_module(backbone, str(tmp_path / "x"), kind="classification")
    with pytest.raises(ValueError, match="Unknown module kind"):
        hub_export.export_module(backbone, str(tmp_path / "y"), kind="logits")
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    assert os.listdir(tmp_path) == []  # no temporary folders left behind either


@pytest.mark.parametrize("trainable", [True, False])
def test_hub_keras_layer_fine_tunes_in_tf_keras(modules, trainable):
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(4, 16, 16, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0])
    layer = hub.KerasLayer(modules["feature_vector"], trainable=trainable)
    model = tf_keras.Sequential(
        [tf_keras.Input((16, 16, 3)), layer, tf_keras.layers.Dense(3, kernel_initializer="zeros")]
    )
    model.compile(
        tf_keras.optimizers.SGD(0.05),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    module_variables = layer.variables
    before = [variable.numpy().copy() for variable in module_variables]
    history = model.fit(images, labels, epochs=2 if trainable else 1, batch_size=4, verbose=0)
    change = max(
        float(np.max(np.abs(old - variable.numpy())))
        for old, variable in zip(before, module_variables, strict=True)
    )
    losses = history.history["loss"]
    if trainable:
        assert losses[-1] < losses[0]
        assert len(layer.trainable_weights) == len(module_variables) > 0
        assert change > 0
    else:
        assert layer.trainable_weights == []
        assert change == 0
