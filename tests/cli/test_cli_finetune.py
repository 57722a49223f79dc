"""bit-finetune end to end in a subprocess: data, fit, SIGTERM, resume, evaluation, export; the
settings it passes to `finetune` are `FinetuneConfig` fields."""

import ast
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import bit_tf.finetune.hyperrule  # noqa: F401  (registers the layers and the schedule for loading)
from bit_tf.finetune.recipe import FinetuneConfig
from bit_tf.models.weights import official_arrays, read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The README's main job, shortened for CI: 10 steps of batch 8 at 16x16 instead of 400 of 32
# at 32x32.
SHORT = ["--steps=10", "--batch_size=8", "--resize=16", "--crop=16", "--validation_every=4"]
ENVIRONMENT = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def bit_finetune(*flags: str, cwd) -> subprocess.CompletedProcess:
    """Runs `python -m bit_cli.finetune` with these flags in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "bit_cli.finetune", *flags],
        cwd=cwd,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_main_job_survives_sigterm_resumes_and_exports(tmp_path):
    export_dir = tmp_path / "out"
    command = [sys.executable, "-m", "bit_cli.finetune", f"--export_dir={export_dir}", *SHORT]
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")

    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in process.stdout:
        if line.startswith("Epoch 2/"):
            process.send_signal(signal.SIGTERM)
            break
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received: stopped at step" in output
    progress = json.loads((export_dir / "checkpoints" / "progress.json").read_text())
    assert 4 <= progress["step"] < 10 and not progress["finished"]
    assert not (export_dir / "model.keras").exists()

    completed = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    match = re.fullmatch(r"final validation accuracy: (\d\.\d+)", lines[-1])
    assert match and 0.0 <= float(match.group(1)) <= 1.0, lines[-3:]
    assert "Resuming from" in completed.stderr
    progress = json.loads((export_dir / "checkpoints" / "progress.json").read_text())
    assert progress["finished"] and progress["step"] == 10
    model = keras.saving.load_model(export_dir / "model.keras")
    assert model.output_shape == (None, 10)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10


def test_help_lists_every_flag_with_its_default():
    completed = subprocess.run(
        [sys.executable, "-m", "bit_cli.finetune", "--helpfull"],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = completed.stdout + completed.stderr
    for flag in (
        "model",
        "weights",
        "dataset",
        "data_dir",
        "examples_per_class",
        "batch_size",
        "base_lr",
        "steps",
        "resize",
        "crop",
        "export_dir",
        "logdir",
    ):
        assert f"--{flag}:" in text, flag


def test_weights_path_without_model_fine_tunes_the_checkpoints_architecture(
    official_checkpoint, tmp_path
):
    # The R14x1 fixture is no named model: the architecture can only come from the file. One
    # step at rate 0 leaves the backbone exactly as loaded.
    completed = bit_finetune(
        f"--weights={official_checkpoint}",
        "--steps=1",
        "--base_lr=0",
        "--batch_size=8",
        "--resize=16",
        "--crop=16",
        f"--export_dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("final validation accuracy: ")
    model = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert model.output_shape == (None, 10)
    loaded, expected = official_arrays(model), read_checkpoint(official_checkpoint)
    key = "resnet/block4/unit01/c/standardized_conv2d/kernel"
    assert np.array_equal(loaded[key], expected[key])


def test_model_that_does_not_fit_the_weights_is_a_one_line_error(official_checkpoint, tmp_path):
    completed = bit_finetune(
        "--model=BiT-S-R26x1", f"--weights={official_checkpoint}", cwd=tmp_path
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("bit-finetune: error: --model=BiT-S-R26x1 (R26x1) does not fit")
    assert official_checkpoint in error and "units (1, 1, 1, 1)" in error
    assert not (tmp_path / "bit_finetune").exists()


def test_every_setting_the_cli_passes_to_finetune_is_a_config_field():
    with open(os.path.join(REPO, "bit_cli", "finetune.py")) as file:
        tree = ast.parse(file.read())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "finetune"
    ]
    assert len(calls) == 1
    keywords = {keyword.arg for keyword in calls[0].keywords}
    fields = {field.name for field in dataclasses.fields(FinetuneConfig)}
    assert keywords <= fields, keywords - fields
    assert {"batch_size", "steps", "checkpoint_dir", "strategy", "dtype"} <= keywords
