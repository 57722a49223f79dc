"""The ResNetV2 builder, the registry, and parity with the authors' reference implementation.

Runs on whichever Keras backend is active (tests/test_jax_backend.py reruns it on JAX).
"""

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.models.registry import UPSTREAM, parse_model_name
from bit_tf.models.resnet_v2 import resnet_v2

from numerics import PARITY_TOLERANCE, relative_error


@pytest.fixture(scope="module")
def fixture_model(official_checkpoint):
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


def test_logits_match_the_reference_implementation(fixture_model, reference_outputs):
    logits = fixture_model(reference_outputs["images"])
    assert relative_error(logits, reference_outputs["logits"]) < PARITY_TOLERANCE


def test_features_match_the_reference_implementation(official_checkpoint, reference_outputs):
    features_model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    bit_tf.load_official_weights(features_model, official_checkpoint)
    features = features_model(reference_outputs["images"])
    assert tuple(features.shape) == (2, 2048)
    assert relative_error(features, reference_outputs["features"]) < PARITY_TOLERANCE


# bfloat16 keeps 8 significant bits, so every activation it stores is rounded by up to 2^-9
# (0.2%). Through R14 the logits measured 1.3% and the features 2.2% from the reference
# (2026-11-27, TensorFlow's oneDNN kernels); the bound leaves room for other backends' kernels.
MIXED_BFLOAT16_TOLERANCE = 5e-2


def test_mixed_bfloat16_computes_in_bfloat16_near_the_reference(
    official_checkpoint, reference_outputs
):
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10, dtype="mixed_bfloat16")
    bit_tf.load_official_weights(model, official_checkpoint)
    logits = model(reference_outputs["images"])
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert model.get_layer("block1_unit01").conv_a.compute_dtype == "bfloat16"
    error = relative_error(logits, reference_outputs["logits"])
    # Above float32's round-off: the convolutions really ran in bfloat16.
    assert PARITY_TOLERANCE < error < MIXED_BFLOAT16_TOLERANCE
    predicted = model.predict(reference_outputs["images"], verbose=0)
    assert relative_error(predicted, reference_outputs["logits"]) < MIXED_BFLOAT16_TOLERANCE


def test_a_mixed_bfloat16_model_reloads_in_bfloat16_under_a_float32_global_policy(tmp_path):
    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=3, dtype="mixed_bfloat16")
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    assert keras.config.dtype_policy().name == "float32"
    reloaded = keras.saving.load_model(path)
    for unit in ("block1_unit01", "block4_unit01"):
        assert reloaded.get_layer(unit).conv_b.compute_dtype == "bfloat16"
        assert reloaded.get_layer(unit).norm_c.compute_dtype == "bfloat16"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded(images)), keras.ops.convert_to_numpy(model(images))
    )


def test_an_unknown_dtype_policy_is_named():
    with pytest.raises(ValueError, match="Unknown dtype policy 'bfloat17'"):
        resnet_v2(units_per_block=(1, 1, 1, 1), dtype="bfloat17")


def test_predict_matches_call_on_other_image_sizes(fixture_model):
    images = np.random.default_rng(0).uniform(size=(3, 45, 61, 3)).astype("float32")
    np.testing.assert_allclose(
        fixture_model.predict(images, verbose=0),
        keras.ops.convert_to_numpy(fixture_model(images)),
        rtol=1e-5,
        atol=1e-5,
    )


PUBLISHED_BACKBONE_SIZES = {
    "R50x1": 23_500_352,
    "R101x1": 42_492_480,
    "R50x3": 211_174_080,
    "R101x3": 381_789_888,
    "R152x2": 232_238_208,
    "R152x4": 928_340_224,
}


@pytest.mark.parametrize(("architecture", "size"), PUBLISHED_BACKBONE_SIZES.items())
def test_published_backbone_sizes(architecture, size):
    model = bit_tf.create_model(f"BiT-M-{architecture}", num_classes=None)
    assert model.count_params() == size
    keras.backend.clear_session()


def test_registry_names_and_default_heads():
    names = bit_tf.list_models()
    assert len(names) == 3 * 6 * 4
    assert {"BiT-S-R50x1", "BiT-M-R152x4", "BiT-L-R18x2"} <= set(names)
    assert parse_model_name("BiT-L-R101x3") == ("L", 101, 3)
    assert {prefix: info["num_classes"] for prefix, info in UPSTREAM.items()} == {
        "S": 1000,
        "M": 21843,
        "L": 18291,
    }
    model = bit_tf.create_model("BiT-S-R18x1")
    assert model.output_shape == (None, 1000)
    assert model.get_layer("block1_unit01").__class__.__name__ == "PreActBasic"
    assert bit_tf.create_model("BiT-L-R26x1", num_classes=None).output_shape == (None, 2048)
    assert bit_tf.create_model("BiT-S-R18x2", num_classes=None).output_shape == (None, 1024)


def test_head_is_zero_initialised_and_stem_is_exact():
    model = bit_tf.create_model("BiT-S-R26x1", num_classes=7)
    head = model.get_layer("head")
    assert not np.any(keras.ops.convert_to_numpy(head.kernel))
    assert model.get_layer("root_pool").padding == "valid"
    assert model.get_layer("root_pool_pad").padding == ((1, 1), (1, 1))
    out = model(np.random.default_rng(1).uniform(size=(2, 64, 48, 3)).astype("float32"))
    assert not np.any(keras.ops.convert_to_numpy(out))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("BiT-X-R50x1", "Unknown model name 'BiT-X-R50x1'"),
        ("BiT-M-R51x1", "depth must be one of"),
        ("BiT-M-R50x5", "width one of"),
    ],
)
def test_unknown_names_are_refused_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        bit_tf.create_model(name)


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive integer or None, got 0"):
        resnet_v2(18, num_classes=0)
    with pytest.raises(ValueError, match="Unsupported depth 19"):
        resnet_v2(19)
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
        resnet_v2(18, input_shape=(32, 32, 1))


def test_config_round_trip_gives_identical_outputs(fixture_model, reference_outputs):
    clone = keras.Model.from_config(fixture_model.get_config())
    clone.set_weights(fixture_model.get_weights())
    images = reference_outputs["images"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(images)),
        keras.ops.convert_to_numpy(fixture_model(images)),
    )


def test_keras_file_round_trip_gives_identical_outputs(fixture_model, reference_outputs, tmp_path):
    path = tmp_path / "bit.keras"
    fixture_model.save(path)
    loaded = keras.models.load_model(path)
    images = reference_outputs["images"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(fixture_model(images)),
    )


def test_submodules_load_on_first_use_and_unknown_names_are_refused():
    import os
    import subprocess
    import sys

    code = (
        "import bit_tf, sys; "
        "assert 'bit_tf.data' not in sys.modules; "
        "source = bit_tf.data.from_arrays(__import__('numpy').zeros((4, 8, 8, 3)), [0, 1, 0, 1]); "
        "assert source.num_classes == 2; "
        "assert bit_tf.data.image_folder.__name__ == 'bit_tf.data.image_folder'\n"
        "try:\n    bit_tf.no_such_thing\nexcept AttributeError as error:\n    print(error)\n"
        "assert not hasattr(bit_tf, 'models.x') and getattr(bit_tf, 'nope', None) is None"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "module 'bit_tf' has no attribute 'no_such_thing'" in result.stdout
    # A submodule that cannot be imported (a JAX-only install without TensorFlow) is an
    # AttributeError that says why, so hasattr() stays usable.
    code = (
        "import sys; sys.modules['tensorflow'] = None; import bit_tf; "
        "assert not hasattr(bit_tf, 'data'); bit_tf.data"
    )
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment
    )
    assert "bit_tf.data could not be imported (import of tensorflow halted" in result.stderr


def test_finetune_stays_callable_however_it_is_imported():
    import subprocess
    import sys

    code = (
        "import bit_tf.finetune, bit_tf; "
        "assert callable(bit_tf.finetune), type(bit_tf.finetune); "
        "assert bit_tf.finetune.finetune.__name__ == 'finetune'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_checkpoint_decides_the_head(official_checkpoint, reference_outputs):
    # The fixture is an R14x1 (one unit per block) with a 10-class head.
    small = {"units_per_block": (1, 1, 1, 1)}
    model = bit_tf.create_model("BiT-M-R50x1", weights=official_checkpoint, **small)
    assert model.output_shape == (None, 10)
    logits = model(reference_outputs["images"])
    assert relative_error(logits, reference_outputs["logits"]) < PARITY_TOLERANCE
    # An explicit num_classes wins; a head that does not fit stays zero.
    other = bit_tf.create_model("BiT-M-R50x1", 3, weights=official_checkpoint, **small)
    assert other.output_shape == (None, 3)
    assert not np.any(keras.ops.convert_to_numpy(other.get_layer("head").kernel))
    features = bit_tf.create_model("BiT-M-R50x1", None, weights=official_checkpoint, **small)
    assert features.output_shape == (None, 2048)


def test_released_names_build_their_architecture_and_head():
    small = {"units_per_block": (1, 1, 1, 1)}
    assert bit_tf.create_model("BiT-M-R50x1-ILSVRC2012", **small).output_shape == (None, 1000)
    vtab_model = bit_tf.create_model("BiT-M-R50x1-run1-smallnorb-azimuth", **small)
    assert vtab_model.output_shape == (None, 18)
    teacher = bit_tf.create_model("BiT-M-R152x2-teacher-224", num_classes=None, **small)
    assert teacher.output_shape == (None, 4096)  # width 2: 2 x 2048 features
    with pytest.raises(ValueError, match="list_released_checkpoints"):
        bit_tf.create_model("BiT-M-R50x1-ILSVRC2013")
