"""What users do by mistake, done for real to bit-finetune and bit-export: Ctrl-C pressed
three times, a fine-tuned `.keras` as the next run's `--weights`, and wrong paths or values,
which end in one line and status 2."""

import json
import os
import signal
import subprocess
import sys
import time

import keras

import bit_tf.hyperrule  # noqa: F401  (registers the layers and the schedule for loading)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVIRONMENT = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
# bit-finetune's offline default, shortened: batch 8 at 16x16, a validation every 4 steps.
SHORT = ["--batch_size=8", "--resize=16", "--crop=16", "--validation_every=4"]


def run_command(module: str, *flags: str, cwd) -> subprocess.CompletedProcess:
    """Runs `python -m <module>` with these flags in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=cwd,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_three_sigints_during_the_save_leave_a_whole_checkpoint_and_the_run_resumes(tmp_path):
    export_dir = tmp_path / "out"
    flags = [f"--export_dir={export_dir}", "--steps=8", *SHORT]
    command = [sys.executable, "-m", "bit_cli.finetune", *flags]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=ENVIRONMENT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in process.stdout:
        if line.startswith("Epoch 2/"):
            # The first Ctrl-C asks for a checkpoint at the next step; the next two come while
            # it is being written, as from a user pressing again.
            for _ in range(3):
                process.send_signal(signal.SIGINT)
                time.sleep(0.3)
            break
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert "SIGINT received again: still writing the checkpoint" in output, output[-3000:]
    checkpoints = export_dir / "checkpoints"
    assert not (checkpoints / "last.partial.keras").exists()
    step = json.loads((checkpoints / "progress.json").read_text())["step"]
    assert 4 < step < 8
    last = keras.saving.load_model(checkpoints / "last.keras")
    assert int(keras.ops.convert_to_numpy(last.optimizer.iterations)) == step

    completed = subprocess.run(
        command, cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"at step {step} of 8" in completed.stderr
    assert json.loads((checkpoints / "progress.json").read_text())["step"] == 8
