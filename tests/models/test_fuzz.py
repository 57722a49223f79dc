"""Property-based tests: damaged checkpoints and odd images give documented errors, never crashes.

- Any mutation of a checkpoint file's bytes, or of its keys, shapes and dtypes, ends in a loaded
  model or a `CheckpointError`, nothing else.
- Any float image batch (any size, any value range) gives finite outputs of the right shape.
"""

import io

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bit_tf
from bit_tf.models import input_scale
from bit_tf.models.weights import CheckpointError, read_checkpoint

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def small_checkpoint_bytes() -> bytes:
    rng = np.random.default_rng(0)
    arrays = {
        "resnet/root_block/standardized_conv2d/kernel": rng.normal(size=(7, 7, 3, 4)),
        "resnet/group_norm/gamma": np.ones(4),
        "resnet/group_norm/beta": np.zeros(4),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **{key: value.astype("float32") for key, value in arrays.items()})
    return buffer.getvalue()


SMALL = small_checkpoint_bytes()


@SETTINGS
@given(
    cut=st.integers(min_value=0, max_value=len(SMALL)),
    flips=st.lists(
        st.tuples(st.integers(0, len(SMALL) - 1), st.integers(1, 255)), min_size=0, max_size=8
    ),
    garbage=st.binary(max_size=64),
)
def test_mutated_bytes_give_arrays_or_a_checkpoint_error(tmp_path, cut, flips, garbage):
    data = bytearray(SMALL)
    for position, mask in flips:
        data[position] ^= mask
    data = bytes(data[:cut]) + garbage
    path = tmp_path / "mutated.npz"
    path.write_bytes(data)
    try:
        arrays = read_checkpoint(str(path))
    except CheckpointError as error:
        assert "mutated.npz" in str(error)
        return
    assert all(array.dtype == np.float32 for array in arrays.values())


@pytest.fixture(scope="module")
def fixture_arrays(official_checkpoint):
    with np.load(official_checkpoint) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def model():
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)


MUTATIONS = st.sampled_from(["drop", "reshape", "rename", "dtype", "scalar", "object"])


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(st.tuples(MUTATIONS, st.integers(0, 10**6)), min_size=1, max_size=3))
def test_mutated_keys_and_shapes_give_a_checkpoint_error(
    tmp_path, fixture_arrays, model, mutations
):
    arrays = dict(fixture_arrays)
    keys = sorted(arrays)
    touched = set()
    for kind, index in mutations:
        key = keys[index % len(keys)]
        if key not in arrays:
            continue
        touched.add(key)
        if kind == "drop":
            del arrays[key]
        elif kind == "reshape":
            arrays[key] = arrays[key].reshape(-1)[:-1] if arrays[key].size > 1 else np.ones(2)
        elif kind == "rename":
            renamed = key.replace("resnet/", "resnet/extra_")
            arrays[renamed] = arrays.pop(key)
            touched.add(renamed)
        elif kind == "dtype":
            arrays[key] = np.array(["text"] * 3)
        elif kind == "scalar":
            arrays[key] = np.float32(1.0)
        else:
            arrays[key] = np.array([{"a": 1}], dtype=object)
    path = tmp_path / "mutated.npz"
    np.savez(path, **arrays)
    try:
        bit_tf.load_official_weights(model, str(path))
    except CheckpointError:
        return
    # Only a checkpoint whose changes touch nothing but the head (left zero) may load.
    assert touched <= {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}, touched


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    low=st.floats(-10, 1, allow_nan=False),
    span=st.floats(0, 20, allow_nan=False),
    dtype=st.sampled_from(["float32", "float16", "float64", "uint8"]),
)
def test_any_image_batch_gives_finite_outputs(model, batch, height, width, low, span, dtype):
    rng = np.random.default_rng(batch * 1000 + height * 10 + width)
    images = (low + span * rng.uniform(size=(batch, height, width, 3))).astype(dtype)
    if dtype != "uint8" and float(np.max(images)) > input_scale.MAX_UNIT_VALUE:
        with pytest.raises(ValueError, match="largest value here is .* Divide them by 255"):
            model(images)  # floats in 0-255 are refused, naming the value
        return
    outputs = keras.ops.convert_to_numpy(model(images))
    assert outputs.shape == (batch, 10)
    assert np.all(np.isfinite(outputs))
