"""bit-finetune end to end in a subprocess: data, fit, SIGTERM, resume, evaluation, export."""

import json
import os
import re
import signal
import subprocess
import sys

import keras
import pytest

import bit_tf.hyperrule  # noqa: F401  (registers the layers and the schedule for loading)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's main job, shortened for CI: 10 steps of batch 8 at 16x16 instead of 400 of 32
# at 32x32.
SHORT = ["--steps=10", "--batch_size=8", "--resize=16", "--crop=16", "--validation_every=4"]


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
