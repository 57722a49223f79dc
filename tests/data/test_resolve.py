"""bit_tf.data.resolve: the one way a user's dataset argument becomes a source."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bit_tf.data import pipelines
from bit_tf.data.resolve import resolve


def test_arrays_a_folder_a_source_and_a_dataset_resolve(tmp_path):
    images = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype("float32")
    from_arrays = resolve((images, np.array([0, 1, 2, 0, 1, 2])), role="validation")
    assert isinstance(from_arrays, pipelines.ImageSource)
    assert (from_arrays.num_classes, from_arrays.num_examples) == (3, 6)
    assert from_arrays.name == "validation"

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for index in range(2):
            pixels = np.full((16, 16, 3), 40 * index, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{index}.png")
    folder = resolve(str(tmp_path))
    assert folder.class_names == ("cat", "dog") and folder.num_examples == 4
    assert resolve(tmp_path).class_names == ("cat", "dog")  # a PathLike too

    batches = tf.data.Dataset.from_tensor_slices((images, tf.one_hot([0] * 6, 2))).batch(2)
    assert resolve(from_arrays) is from_arrays
    assert resolve(batches) is batches
    assert resolve(None) is None


def test_another_kind_is_refused_naming_the_role_and_the_type():
    with pytest.raises(TypeError, match=r"^train must be .* got int\.$"):
        resolve(3)
    with pytest.raises(TypeError, match=r"^validation must be .* got dict\.$"):
        resolve({"images": []}, role="validation")


def test_a_path_that_is_no_folder_nor_tfds_name_is_named_as_such(tmp_path):
    # A mistyped folder, with or without a slash: not TFDS's own parsing error or its list.
    for value in (str(tmp_path / "phtos") + "/", "photoz"):
        with pytest.raises(ValueError, match=r"is neither a folder here nor a TFDS dataset name"):
            resolve(value)


def test_a_validation_pair_is_counted_with_the_train_sources_classes():
    images = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype("float32")
    train = resolve((images, np.array([0, 1, 2, 0, 1, 2])))
    # No example of the last class in the validation pair: still the same three-class task.
    validation = resolve((images[:4], np.array([0, 1, 0, 1])), "validation", like=train)
    assert validation.num_classes == 3
    with pytest.raises(ValueError, match=r"must be in \[0, 3\)"):
        resolve((images[:2], np.array([0, 5])), "validation", like=train)


def test_labels_and_class_names_of_arrays_are_checked_before_use():
    images = np.zeros((3, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="must be a 1-D array of integer class indices"):
        pipelines.from_arrays(images, np.array(["cat", "dog", "emu"]))
    with pytest.raises(ValueError, match="2 class names given for the 3 classes"):
        pipelines.from_arrays(images, np.arange(3), class_names=["cat", "dog"])
    with pytest.raises(TypeError, match="must be a sequence of names"):
        pipelines.from_arrays(images, np.arange(3), class_names="abc")
    named = pipelines.from_arrays(images, np.arange(3), class_names=np.array(["a", "b", "c"]))
    assert tuple(named.class_names) == ("a", "b", "c")
    assert pipelines.few_shot(named, np.int64(1)).num_examples == 3
