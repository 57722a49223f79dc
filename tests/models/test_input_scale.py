"""bit_tf.models.input_scale: 8- and 16-bit pixels become floats in [0, 1]; float images in 0-255
are refused where their values are at hand, on TensorFlow and on JAX."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from bit_tf.models import input_scale

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pixels_are_scaled_by_their_dtype_and_other_integers_refused():
    pixels = np.array([[0, 51, 255]], np.uint8)
    scaled = input_scale.to_unit_scale(pixels)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.2, 1.0]])
    np.testing.assert_allclose(input_scale.to_unit_scale(pixels.astype(np.uint16) * 257), scaled)
    tensor = input_scale.to_unit_scale(keras.ops.convert_to_tensor(pixels))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor), scaled)
    floats = np.array([[0.5, 2.0]], np.float64)
    assert input_scale.to_unit_scale(floats) is floats  # floats are the model's business
    for dtype in ("int8", "int32", "int64", "bool"):
        with pytest.raises(ValueError, match=f"model 'm' takes .* got dtype {dtype}"):
            input_scale.to_unit_scale(np.zeros((1, 2), dtype), where="model 'm'")


def test_floats_in_0_255_are_refused_where_values_are_at_hand():
    import tensorflow as tf

    images = np.full((2, 4, 4, 3), 0.5, np.float32)
    images[1, 2, 3, 0] = 254.5
    for batch in (images, tf.constant(images), images.astype(np.float16)):
        with pytest.raises(ValueError, match=r"model 'm' takes .* largest value here is 254.5"):
            input_scale.check_unit_scale(batch, "model 'm'")
    fine = np.clip(images, 0.0, 1.5)  # up to 1.5: resampling overshoot, not the 0-255 scale
    input_scale.check_unit_scale(fine, "model 'm'")
    input_scale.check_unit_scale(np.zeros((0, 4, 4, 3), np.float32), "model 'm'")
    input_scale.check_unit_scale((images * 255).astype(np.uint8), "model 'm'")  # integers: scaled
    # Inside a compiled graph the values are not at hand: nothing is checked (no host sync).
    seen = []
    tf.function(lambda batch: seen.append(input_scale.values_at_hand(batch)))(tf.constant(images))
    assert seen == [False]
    assert input_scale.values_at_hand(tf.constant(images))
    assert not input_scale.values_at_hand(keras.Input((4, 4, 3)))
    with pytest.raises(ValueError, match="largest value here is 254.5"):  # eager inference call
        input_scale.check_call_arguments((images,), {}, "model 'm'")
    input_scale.check_call_arguments((images,), {"training": True}, "model 'm'")  # as fit calls


JAX_SCRIPT = textwrap.dedent(
    """
    import json, jax, keras, numpy as np
    from bit_tf.models.bit_model import BitModel

    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, kernel_initializer="glorot_uniform")(inputs)
    model = BitModel(inputs, keras.layers.GlobalAveragePooling2D()(features))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), np.uint8)
    floats = pixels.astype("float32") / 255.0
    expected = np.asarray(model(floats))
    results = {
        "eager_uint8": float(np.abs(np.asarray(model(pixels)) - expected).max()),
        "predict_uint8": float(np.abs(model.predict(pixels, verbose=0) - expected).max()),
        "jit_uint8": float(np.abs(np.asarray(jax.jit(
            lambda x: model(x, training=False))(pixels)) - expected).max()),
    }
    for name, run in (
        ("eager_floats_255", lambda: model(floats * 255.0)),
        ("jax_array_255", lambda: model(jax.numpy.asarray(floats * 255.0))),
        ("predict_floats_255", lambda: model.predict(floats * 255.0, verbose=0)),
    ):
        try:
            run()
            results[name] = "accepted"
        except ValueError as error:
            results[name] = str(error)
    print("RESULTS " + json.dumps(results))
    """
)


def test_the_checks_run_on_jax_too(tmp_path):
    pytest.importorskip("jax")
    (tmp_path / "check.py").write_text(JAX_SCRIPT)
    environment = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": REPOSITORY,
    }
    completed = subprocess.run(
        [sys.executable, str(tmp_path / "check.py")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    for name in ("eager_uint8", "predict_uint8", "jit_uint8"):
        assert results[name] < 1e-5, (name, results[name])
    for name in ("eager_floats_255", "jax_array_255", "predict_floats_255"):
        assert "largest value here is 255" in results[name], (name, results[name])
