"""bit-distill end to end in a subprocess: a fine-tuned teacher file, SIGTERM, resume to the same
step count, the student alone in model.keras, the final line; a missing teacher is one line."""

import json
import os
import re
import signal
import subprocess
import sys

import keras
import pytest

import bit_tf
import bit_tf.distill.recipe  # noqa: F401  (registers the Distiller and optimizer of checkpoints)
from bit_tf.data import pipelines as data
from bit_tf.finetune.recipe import finetune

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVIRONMENT = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
# The offline default, shortened for CI: 10 steps of batch 8 at 16x16 instead of 800 of 32 at 32.
SHORT = ["--steps=10", "--batch_size=8", "--crop=16", "--validation_every=4"]


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> str:
    """A small ResNetV2 fine-tuned for 30 steps on the digits at 16x16, saved as bit-finetune
    saves its model.keras."""
    keras.utils.set_random_seed(0)
    train, _ = data.load_digits(0.2, seed=0)
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)
    model, _ = finetune(
        backbone,
        train,
        batch_size=16,
        steps=30,
        base_lr=0.4,
        resize=18,
        crop=16,
        jit_compile=False,
        verbose=0,
        seed=0,
    )
    path = str(tmp_path_factory.mktemp("teacher") / "model.keras")
    model.save(path)
    return path


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_ends_at_the_same_step_with_the_student(
    teacher_file, tmp_path
):
    export_dir = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "bit_cli.distill",
        f"--teacher={teacher_file}",
        "--student=BiT-S-R18x1",
        f"--export_dir={export_dir}",
        *SHORT,
    ]
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
            process.send_signal(signal.SIGTERM)
            break
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received: stopped at step" in output
    checkpoints = export_dir / "checkpoints"
    progress = json.loads((checkpoints / "progress.json").read_text())
    step = progress["step"]
    assert 4 <= step < 10 and not progress["finished"]
    assert not (export_dir / "model.keras").exists()
    interrupted = keras.saving.load_model(checkpoints / "last.keras")
    assert int(keras.ops.convert_to_numpy(interrupted.optimizer.iterations)) == step

    completed = subprocess.run(
        command, cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"Resuming from {checkpoints / 'last.keras'} at step {step} of 10" in completed.stderr
    last = completed.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"final validation accuracy: (\d\.\d{4}) \(teacher: (\d\.\d{4}), agreement: (\d\.\d{4})\)",
        last,
    )
    assert match, completed.stdout[-2000:]
    progress = json.loads((checkpoints / "progress.json").read_text())
    assert progress["finished"] and progress["step"] == 10
    # model.keras is the student alone: a BiT-S-R18x1 with the digits' head, no teacher.
    student = keras.saving.load_model(export_dir / "model.keras")
    assert student.output_shape == (None, 10)
    expected = bit_tf.create_model("BiT-S-R18x1", num_classes=10).count_params()
    assert student.count_params() == expected
    assert len(student.class_names) == 10
    assert float(match.group(2)) > 0.15  # the teacher beats chance (0.1) on the held-out split

    # Run again once finished: reported, evaluated, and model.keras left as it was.
    written = (export_dir / "model.keras").stat().st_mtime_ns
    again = subprocess.run(
        command, cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds this run, already finished; nothing to train" in again.stdout
    assert again.stdout.strip().splitlines()[-1].startswith("final validation accuracy: ")
    assert (export_dir / "model.keras").stat().st_mtime_ns == written


def test_a_model_file_no_recorded_run_made_is_not_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.keras").write_bytes(b"the user's own model")
    completed = subprocess.run(
        [sys.executable, "-m", "bit_cli.distill", "--export_dir=out", *SHORT],
        cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert completed.stderr.strip().splitlines()[-1] == (
        "bit-distill: error: out/model.keras exists and out/checkpoints records no run that "
        "made it; use --overwrite to replace it, or another --export_dir."
    )
    assert (tmp_path / "out" / "model.keras").read_bytes() == b"the user's own model"
    assert os.listdir(tmp_path / "out") == ["model.keras"]


def test_missing_default_teacher_is_a_one_line_error(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "bit_cli.distill"],
        cwd=tmp_path,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("bit-distill: error: --teacher='bit_finetune/model.keras'")
    assert "run bit-finetune first" in error
    assert not (tmp_path / "bit_distill").exists()


def test_the_flags_choices_are_the_librarys_recipes_and_variants():
    # bit_cli.distill writes them out (its flags load no TensorFlow); read from its source.
    import ast

    from bit_tf.distill.recipes import RECIPE_CHOICES, VARIANTS

    tree = ast.parse(open(os.path.join(REPO, "bit_cli", "distill.py")).read())
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in {
            "RECIPE_CHOICES", "VARIANTS"
        }
    }  # fmt: skip
    assert values == {"RECIPE_CHOICES": RECIPE_CHOICES, "VARIANTS": VARIANTS}


def test_a_teacher_of_other_classes_is_one_line_and_leaves_no_folder(official_checkpoint, tmp_path):
    # The fixture's head has 10 classes; the folder has 2.
    from PIL import Image

    for name in ("cats", "dogs"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (16, 16), (60 * index, 0, 0)).save(
                tmp_path / "photos" / name / f"{index}.jpg"
            )
    completed = subprocess.run(
        [sys.executable, "-m", "bit_cli.distill", f"--teacher={official_checkpoint}",
         "--dataset=photos", "--export_dir=student", *SHORT],
        cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-3000:]
    line = completed.stderr.strip().splitlines()[-1]
    assert line.startswith("bit-distill: error: The teacher") and "2 classes" in line, line
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # no student/ folder, no lock file
