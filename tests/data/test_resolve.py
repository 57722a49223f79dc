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
