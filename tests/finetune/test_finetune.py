"""finetune: the loss goes down, accumulation and MirroredStrategy match one device, NaN stops
training with the last checkpoint intact, SIGINT checkpoints and the rerun resumes; a
FinetuneConfig and keywords give the same run, the same run twice gives the same losses and
weights, and an unknown keyword is refused."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
import bit_tf.finetune.hyperrule  # noqa: F401  (registers the schedule for load_model)
from bit_tf.finetune.recipe import FinetuneConfig, TrainingDivergedError, finetune
from bit_tf.training.segments import segments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"resize": 16, "crop": 16, "jit_compile": False, "verbose": 0, "seed": 0}


def tiny_backbone():
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)


def stripes(count=48, seed=0):
    """Two classes a flip cannot confuse: bright top half (0) or bright bottom half (1)."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = generator.uniform(0.0, 0.3, (count, 16, 16, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        image[8 * label : 8 * label + 8] += 0.6
    return images, labels


def test_short_finetune_lowers_the_loss_with_a_new_zero_head():
    backbone = tiny_backbone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, history = finetune(
            backbone,
            stripes(),
            stripes(16, seed=1),
            batch_size=16,
            steps=16,
            base_lr=0.64,
            warmup_steps=2,
            validation_every=4,
            **FAST,
        )
    # Each validation reads its set to the end: not a warning that the input "ran out".
    assert not [str(warning.message) for warning in caught if "ran out" in str(warning.message)]
    losses = history.history["loss"]
    assert len(losses) == 4 and len(history.history["val_accuracy"]) == 4
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.get_layer("head").units == 2
    assert int(model.optimizer.iterations) == 16
    schedule = model.optimizer._learning_rate
    assert float(schedule(4)) == pytest.approx(0.64 * 16 / 512)


def test_gradient_accumulation_gives_the_update_of_the_full_batch():
    keras.utils.set_random_seed(0)
    initial = tiny_backbone().get_weights()
    results = []
    for accumulation in (1, 4):
        backbone = tiny_backbone()
        backbone.set_weights(initial)
        model, _ = finetune(
            backbone,
            stripes(),
            batch_size=16,
            steps=2,
            base_lr=3.2,
            warmup_steps=0,
            gradient_accumulation_steps=accumulation,
            **FAST,
        )
        assert int(model.optimizer.iterations) == 2
        results.append(model.get_weights())
    changed = 0
    for single, accumulated, start in zip(results[0], results[1], initial + [0, 0], strict=False):
        np.testing.assert_allclose(single, accumulated, rtol=2e-4, atol=2e-6)
        changed += not np.allclose(single, start)
    assert changed > 10, "two updates changed almost nothing"


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    images, labels = stripes(64)
    images[40:48] = np.nan  # the 6th batch of 8
    batches = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 2))).batch(8)
    with pytest.raises(TrainingDivergedError, match=r"became nan at step 6 of 10"):
        finetune(
            tiny_backbone(),
            batches,
            dataset_size=64,
            batch_size=8,
            steps=10,
            validation_every=2,
            checkpoint_dir=str(tmp_path),
            **FAST,
        )
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["step"] == 4 and not progress["finished"]
    restored = keras.saving.load_model(tmp_path / "last.keras")
    assert int(restored.optimizer.iterations) == 4
    assert all(np.isfinite(weight).all() for weight in restored.get_weights())
    assert not list(tmp_path.glob("*.partial*"))


def _run_script(code, tmp_path, name):
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    # The scripts import this module's helpers (test_finetune) and those of tests/.
    search_path = os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.path.dirname(__file__)])
    environment = dict(
        os.environ, PYTHONPATH=search_path, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1"
    )
    return [sys.executable, str(script)], environment


MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
sys.path.insert(0, sys.argv[2])
from test_finetune import FAST, stripes, tiny_backbone
from bit_tf.finetune.recipe import finetune

keras.utils.set_random_seed(0)
backbone = tiny_backbone()
initial = backbone.get_weights()
weights = {}
predictions = {}
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
images, labels = stripes()
# The same global batches for both runs: a fixed-order batched dataset.
batches = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, 2))).batch(16)
for label, strategy in [("one", None), ("mirrored", mirrored)]:
    backbone.set_weights(initial)
    model, _ = finetune(backbone, batches, dataset_size=48, batch_size=16, steps=2,
                        base_lr=3.2, warmup_steps=0, strategy=strategy, **FAST)
    weights[label] = model.get_weights()
    predictions[label] = model.predict(images[:7], verbose=0)
    print(label, "replicas", (strategy or tf.distribute.get_strategy()).num_replicas_in_sync,
          "iterations", int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
np.savez(sys.argv[1], *[w for pair in zip(weights["one"], weights["mirrored"]) for w in pair],
         initial_count=len(initial), predicted_one=predictions["one"],
         predicted_mirrored=predictions["mirrored"])
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_gives_the_update_of_one_device(tmp_path):
    command, environment = _run_script(MIRRORED, tmp_path, "mirrored.py")
    output = tmp_path / "weights.npz"
    completed = subprocess.run(
        [*command, str(output), os.path.dirname(os.path.abspath(__file__))],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "one replicas 1 iterations 2" in completed.stdout
    assert "mirrored replicas 2 iterations 2" in completed.stdout
    arrays = np.load(output)
    pairs = [key for key in arrays.files if key.startswith("arr_")]
    assert len(pairs) > 20
    for index in range(0, len(pairs), 2):
        np.testing.assert_allclose(
            arrays[f"arr_{index}"], arrays[f"arr_{index + 1}"], rtol=1e-4, atol=1e-6
        )
    head_kernel = arrays[f"arr_{len(pairs) - 4}"]
    assert np.abs(head_kernel).max() > 0, "the head did not move"
    # predict on an array: one row per image on both, the same rows.
    assert arrays["predicted_one"].shape == arrays["predicted_mirrored"].shape == (7, 2)
    np.testing.assert_allclose(
        arrays["predicted_mirrored"], arrays["predicted_one"], rtol=1e-4, atol=1e-5
    )


RESUMABLE = """
import os, sys, time
import keras
sys.path.insert(0, sys.argv[2])
from test_finetune import FAST, stripes, tiny_backbone
from bit_tf.finetune.recipe import finetune, TrainingInterruptedError

class Slow(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("batch done", flush=True)
        time.sleep(0.15)

keras.utils.set_random_seed(0)
try:
    model, history = finetune(tiny_backbone(), stripes(), batch_size=8, steps=24,
                              validation_every=5, checkpoint_dir=sys.argv[1],
                              callbacks=[Slow()], **FAST)
except TrainingInterruptedError as interrupted:
    print("interrupted", interrupted.step, flush=True)
    os._exit(128 + interrupted.signal_number)
print("finished iterations", int(model.optimizer.iterations), "epochs", history.epoch, flush=True)
"""


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_the_rerun_finishes_at_the_same_step(tmp_path):
    command, environment = _run_script(RESUMABLE, tmp_path, "resumable.py")
    command += [str(tmp_path / "run"), os.path.dirname(os.path.abspath(__file__))]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = 0
    for line in process.stdout:
        done += line.startswith("batch done")
        if done == 7:
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    step = progress["step"]
    assert 7 <= step < 24 and not progress["finished"]
    assert f"interrupted {step}" in stdout

    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "finished iterations 24" in completed.stdout
    assert completed.stdout.count("batch done") == 24 - step
    epochs = completed.stdout.split("epochs")[-1]
    assert epochs.strip().endswith("4]")
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["finished"] and progress["step"] == 24


def test_bad_arguments_are_refused_before_training():
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 .* batch_size=16"):
        finetune(tiny_backbone(), stripes(), batch_size=16, gradient_accumulation_steps=3, **FAST)
    with pytest.raises(TypeError, match="got int"):
        finetune(tiny_backbone(), 5, **FAST)
    with pytest.raises(ValueError, match="dtype='mixed_bfloat16' applies to a model name"):
        finetune(tiny_backbone(), stripes(), dtype="mixed_bfloat16", **FAST)
    with pytest.raises(ValueError, match="Unknown dtype policy 'float33'"):
        finetune("BiT-S-R18x1", stripes(), dtype="float33", **FAST)


def test_mixed_bfloat16_trains_in_bfloat16_with_float32_weights_and_logits():
    model, history = finetune(
        "BiT-S-R18x1",
        stripes(),
        batch_size=16,
        steps=16,
        base_lr=0.64,
        warmup_steps=2,
        validation_every=4,
        dtype="mixed_bfloat16",
        **FAST,
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.get_layer("root_conv").compute_dtype == "bfloat16"
    assert model.get_layer("block2_unit01").conv_a.compute_dtype == "bfloat16"
    assert {variable.dtype for variable in model.weights} == {"float32"}
    logits = model(stripes(4)[0])
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_segments_cover_every_step_once():
    assert segments(0, 24, 5) == [(0, 4, 5), (4, 1, 4)]
    assert segments(7, 24, 5) == [(1, 1, 3), (2, 2, 5), (4, 1, 4)]
    assert segments(24, 24, 5) == []


def test_config_defaults_are_the_keyword_defaults_of_finetune():
    assert dataclasses.asdict(FinetuneConfig()) == {
        "weights": None,
        "batch_size": 512,
        "steps": None,
        "base_lr": 0.003,
        "mixup_alpha": None,
        "gradient_accumulation_steps": "auto",
        "strategy": None,
        "callbacks": None,
        "resize": None,
        "crop": None,
        "warmup_steps": None,
        "validation_every": None,
        "dataset_size": None,
        "checkpoint_dir": None,
        "logdir": None,
        "seed": None,
        "dtype": None,
        "jit_compile": "auto",
        "verbose": "auto",
        "random_flip": True,
        "random_crop": True,
        "overwrite": False,
        "cache": "auto",
        "hyperrule": "lecture",
        "eval_resize": "resize",
    }


def test_a_config_and_keywords_give_the_same_run(tmp_path):
    keras.utils.set_random_seed(0)
    initial = tiny_backbone().get_weights()
    options = {"batch_size": 16, "steps": 2, "base_lr": 0.64, "warmup_steps": 1, **FAST}
    calls = {
        "keywords": ((), options),
        "config": ((FinetuneConfig(**options),), {}),
        "config and keywords": ((), {"config": FinetuneConfig(batch_size=8, steps=5), **options}),
    }
    progress, weights = {}, {}
    for label, (config, keywords) in calls.items():
        backbone = tiny_backbone()
        backbone.set_weights(initial)
        directory = tmp_path / label.replace(" ", "_")
        model, _ = finetune(
            backbone, stripes(), None, *config, checkpoint_dir=str(directory), **keywords
        )
        progress[label] = json.loads((directory / "progress.json").read_text())
        weights[label] = model.get_weights()
    # What defines the run: the model, the data (an (images, labels) pair here), the schedule.
    assert progress["keywords"]["settings"] == {
        "model": backbone.name,
        "weights": None,
        "dataset": {"name": "train", "class_names": ["0", "1"], "examples": 48},
        "num_classes": 2,
        "batch_size": 16,
        "total_steps": 2,
        "boundaries": progress["keywords"]["settings"]["boundaries"],
        "base_lr": 0.64,
        "gradient_accumulation_steps": 1,
        "resolution": [16, 16],
        "mixup_alpha": 0.0,
        "augmentation": {"random_flip": True, "random_crop": True},
        "seed": 0,
        "dtype": "float32",
        "hyperrule": "lecture",
        "eval_resize": "resize",
    }
    assert progress["config"] == progress["keywords"] == progress["config and keywords"]
    for label in ("config", "config and keywords"):
        for ours, theirs in zip(weights[label], weights["keywords"], strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_the_same_run_twice_gives_the_same_losses_and_weights():
    # A model name: its initial weights come from the seed, as do the input's order, crops,
    # flips and MixUp.
    runs = []
    for _ in range(2):
        model, history = finetune(
            "BiT-S-R18x1", stripes(32), batch_size=8, steps=3, mixup_alpha=0.2, **FAST
        )
        runs.append((history.history["loss"], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    for first, second in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(first, second)


def test_an_unknown_keyword_or_config_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        finetune(tiny_backbone(), stripes(), batchsize=16, **FAST)
    with pytest.raises(TypeError, match="unexpected keyword argument 'config_dir'"):
        bit_tf.finetune(tiny_backbone(), stripes(), config=FinetuneConfig(), config_dir="runs")
    with pytest.raises(
        TypeError, match="config must be a bit_tf.finetune.FinetuneConfig, got dict"
    ):
        finetune(tiny_backbone(), stripes(), None, {"batch_size": 16})
