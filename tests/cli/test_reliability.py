"""What users do by mistake, done for real to bit-finetune and bit-export: Ctrl-C pressed
three times, a fine-tuned `.keras` as the next run's `--weights`, and wrong paths or values,
which end in one line and status 2."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import bit_tf
import bit_tf.finetune.hyperrule  # noqa: F401  (registers the layers and the schedule for loading)
from bit_tf.models.weights import official_arrays
from bit_tf.training.run_settings import RunSettingsError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def _interrupt_and_rerun(folder) -> dict:
    """Runs a short bit-finetune in `folder`, hits it with three SIGINTs 0.3 s apart, records
    what it left, and runs the same command again."""
    export_dir = folder / "out"
    command = [sys.executable, "-m", "bit_cli.finetune", f"--export_dir={export_dir}"]
    command += ["--steps=12", *SHORT]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=ENVIRONMENT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in process.stdout:
        if line.startswith("Epoch 2/"):
            # The first Ctrl-C asks for a checkpoint at the next step; the next two come while
            # it is being written, as from a user pressing again (unless it is already done:
            # their report is tested in tests/training/test_signals.py, without the race).
            for _ in range(3):
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
                time.sleep(0.3)
            break
    output, _ = process.communicate(timeout=300)
    checkpoints = export_dir / "checkpoints"
    left = {
        "returncode": process.returncode,
        "output": output,
        # bit_tf.training.atomic's temporaries: `.last.keras.partial-<random>.keras` and the like.
        "partial_left": sorted(
            path.name for path in checkpoints.iterdir() if ".partial-" in path.name
        ),
        "progress": json.loads((checkpoints / "progress.json").read_text()),
    }
    if process.returncode == 128 + signal.SIGINT:
        last = keras.saving.load_model(checkpoints / "last.keras")
        left["iterations"] = int(keras.ops.convert_to_numpy(last.optimizer.iterations))
    rerun = subprocess.run(
        command, cwd=folder, env=ENVIRONMENT, capture_output=True, text=True, timeout=300
    )
    return {
        "interrupted": left,
        "rerun": {"returncode": rerun.returncode, "stdout": rerun.stdout, "stderr": rerun.stderr},
    }


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, worker_id) -> dict:
    """`_interrupt_and_rerun`, made once for the whole test session: the first pytest-xdist
    worker to need it makes it under a file lock, the other reads what it recorded."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the workers of this session
    folder = root / "interrupted_run"
    with open(root / "interrupted_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = folder / "record.json"
        if not record.exists():
            folder.mkdir(exist_ok=True)
            record.write_text(json.dumps(_interrupt_and_rerun(folder)))
        found = json.loads(record.read_text())
    return {"export_dir": folder / "out", **found}


@pytest.mark.slow
def test_three_sigints_during_the_save_leave_a_whole_checkpoint_and_the_run_resumes(
    interrupted_run,
):
    interrupted = interrupted_run["interrupted"]
    output = interrupted["output"]
    assert interrupted["returncode"] == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert not interrupted["partial_left"], interrupted["partial_left"]
    step = interrupted["progress"]["step"]
    assert 4 < step < 12 and not interrupted["progress"]["finished"]
    assert interrupted["iterations"] == step  # last.keras is whole and holds that step

    rerun = interrupted_run["rerun"]
    assert rerun["returncode"] == 0, rerun["stderr"][-3000:]
    assert f"at step {step} of 12" in rerun["stderr"]
    progress_path = interrupted_run["export_dir"] / "checkpoints" / "progress.json"
    assert json.loads(progress_path.read_text())["step"] == 12


@pytest.mark.slow
def test_the_keras_files_bit_finetune_writes_are_weights_for_bit_finetune_and_bit_export(
    interrupted_run, tmp_path
):
    assert interrupted_run["rerun"]["returncode"] == 0, interrupted_run["rerun"]["stderr"][-3000:]
    first = interrupted_run["export_dir"]
    written = [
        first / "model.keras",
        first / "checkpoints/last.keras",
        first / "checkpoints/best.keras",
    ]

    # bit-finetune from the best checkpoint, its architecture taken from the file; at rate 0
    # the backbone stays as loaded.
    second = tmp_path / "second"
    completed = run_command(
        "bit_cli.finetune",
        f"--weights={written[2]}",
        f"--export_dir={second}",
        "--steps=1",
        "--base_lr=0",
        *SHORT,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    best = official_arrays(keras.saving.load_model(written[2]))
    again = official_arrays(keras.saving.load_model(second / "model.keras"))
    key = "resnet/block4/unit01/c/standardized_conv2d/kernel"
    assert np.array_equal(best[key], again[key])

    # bit-export loads each file as build_model does: the head kept, or the feature vector.
    from bit_cli import common
    from bit_tf.models.weights import CheckpointError

    for path in map(str, written):
        assert common.build_model("", path).output_shape == (None, 10)
        assert common.build_model("BiT-S-R26x1", path, num_classes=None).output_shape == (
            None,
            2048,
        )
        with pytest.raises(CheckpointError, match="R50x1.*does not fit.*R26x1"):
            common.build_model("BiT-S-R50x1", path)


@pytest.mark.slow
def test_a_finished_run_is_reported_and_a_changed_rerun_refused(interrupted_run):
    assert interrupted_run["rerun"]["returncode"] == 0, interrupted_run["rerun"]["stderr"][-3000:]
    export_dir = interrupted_run["export_dir"]
    command = ["bit_cli.finetune", f"--export_dir={export_dir}", *SHORT]
    written = {
        path: path.stat().st_mtime_ns
        for path in [export_dir / "model.keras", *(export_dir / "checkpoints").iterdir()]
    }

    # The same command again: the run is finished, so nothing is trained or rewritten.
    again = run_command(*command, "--steps=12", cwd=export_dir.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds this run, already finished; nothing to train" in again.stdout
    assert "Epoch" not in again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("final validation accuracy: ")

    # Other settings into the same folder: refused in one line naming the change and the way out.
    changed = run_command(*command, "--steps=50", "--seed=3", cwd=export_dir.parent)
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "Traceback" not in changed.stderr
    line = changed.stderr.strip().splitlines()[-1]
    assert line.startswith("bit-finetune: error: ") and "holds a run with other settings" in line
    assert "total_steps: 12, now 50" in line and "seed: 0, now 3" in line
    assert "--overwrite" in line
    assert {path: path.stat().st_mtime_ns for path in written} == written


@pytest.mark.slow
def test_a_finished_run_whose_model_file_is_damaged_says_how_to_write_it_again(
    interrupted_run, tmp_path
):
    assert interrupted_run["rerun"]["returncode"] == 0, interrupted_run["rerun"]["stderr"][-3000:]
    export_dir = tmp_path / "out"
    (export_dir / "checkpoints").mkdir(parents=True)
    for name in ("last.keras", "best.keras"):  # linked, unchanged: nothing writes them here
        os.link(
            interrupted_run["export_dir"] / "checkpoints" / name, export_dir / "checkpoints" / name
        )
    progress = (interrupted_run["export_dir"] / "checkpoints" / "progress.json").read_bytes()
    (export_dir / "checkpoints" / "progress.json").write_bytes(progress)
    whole = (interrupted_run["export_dir"] / "model.keras").read_bytes()
    (export_dir / "model.keras").write_bytes(whole[: len(whole) // 2])  # cut in half
    command = ["bit_cli.finetune", "--export_dir=out", "--steps=12", *SHORT]

    damaged = run_command(*command, cwd=tmp_path)
    assert damaged.returncode == 2, damaged.stderr[-3000:]
    assert "Traceback" not in damaged.stderr and "already finished" not in damaged.stdout
    line = damaged.stderr.strip().splitlines()[-1]
    assert line.startswith("bit-finetune: error: out/model.keras is damaged (")
    assert line.endswith(
        "Delete it to write it again from out/checkpoints/last.keras (the finished run), or run "
        "with --overwrite to train again."
    )


@pytest.mark.slow
def test_bit_vtab_takes_a_fine_tuned_keras_file_as_weights(interrupted_run, tmp_path):
    assert interrupted_run["rerun"]["returncode"] == 0, interrupted_run["rerun"]["stderr"][-3000:]
    weights = interrupted_run["export_dir"] / "model.keras"
    flags = [
        f"--weights={weights}",
        "--tasks=dtd",
        "--runs=1",
        "--steps=2",
        "--batch_size=8",
        "--resize=16",
        "--crop=16",
        "--max_test_examples=16",
        "--output_dir=vtab",
    ]
    # bit-vtab itself, on TFDS's mock data (the real datasets cannot be downloaded here).
    script = (
        "import sys, tensorflow_datasets as tfds\n"
        "from bit_cli import vtab\n"
        f"sys.argv = ['bit-vtab', *{flags!r}]\n"
        "with tfds.testing.mock_data(num_examples=1000):\n"
        "    vtab.run()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("VTAB-1k overall mean accuracy:")
    results = json.loads((tmp_path / "vtab" / "vtab_results.json").read_text())
    assert "dtd" in json.dumps(results)

    # --model must fit the file's architecture.
    wrong = run_command("bit_cli.vtab", f"--weights={weights}", "--model=BiT-S-R50x1", cwd=tmp_path)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert "does not fit the model file" in wrong.stderr.strip().splitlines()[-1]


def _image_folder(root, class_names, images_per_class=6):
    """A folder of real PNG files, one subfolder per class."""
    generator = np.random.default_rng(0)
    for name in class_names:
        os.makedirs(root / name)
        for index in range(images_per_class):
            pixels = generator.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            keras.utils.save_img(root / name / f"{index}.png", pixels)
    return root


@pytest.mark.slow
def test_a_run_on_one_folder_is_not_continued_on_another(tmp_path):
    first = _image_folder(tmp_path / "pets", ["cat", "dog"])
    second = _image_folder(tmp_path / "cars", ["audi", "bmw"])
    flags = ["--export_dir=out", "--steps=2", "--validation_fraction=0.5", "--model=BiT-S-R18x1"]
    flags += SHORT
    completed = run_command("bit_cli.finetune", f"--dataset={first}", *flags, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    model_file = tmp_path / "out" / "model.keras"
    written = model_file.stat().st_mtime_ns

    other = run_command("bit_cli.finetune", f"--dataset={second}", *flags, cwd=tmp_path)
    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    line = other.stderr.strip().splitlines()[-1]
    assert f"dataset name: '{first} (train split)', now '{second} (train split)'" in line
    assert "dataset class_names: ['cat', 'dog'], now ['audi', 'bmw']" in line
    assert model_file.stat().st_mtime_ns == written

    # --overwrite starts again on the new folder and says so in the model it writes.
    again = run_command(
        "bit_cli.finetune", f"--dataset={second}", *flags, "--overwrite", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert keras.saving.load_model(model_file).class_names == ("audi", "bmw")
    progress = json.loads((tmp_path / "out" / "checkpoints" / "progress.json").read_text())
    assert progress["settings"]["dataset"]["class_names"] == ["audi", "bmw"]
    assert progress["step"] == 2 and progress["finished"]


def test_a_model_file_no_recorded_run_made_is_not_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.keras").write_bytes(b"a model from elsewhere")
    completed = run_command("bit_cli.finetune", "--export_dir=out", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr[-3000:]
    line = completed.stderr.strip().splitlines()[-1]
    assert line.startswith("bit-finetune: error: out/model.keras exists")
    assert "--overwrite" in line
    assert os.listdir(tmp_path / "out") == ["model.keras"]


def test_train_and_validation_with_other_class_names_are_refused():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    train = bit_tf.data.from_arrays(images, labels, class_names=["cat", "dog"], name="train")
    validation = bit_tf.data.from_arrays(
        images, labels, class_names=["dog", "cat"], name="validation"
    )
    with pytest.raises(ValueError, match="class 0 is 'cat' in train but 'dog' in validation"):
        bit_tf.finetune("BiT-S-R18x1", train, validation, steps=1, batch_size=2)


def test_a_checkpoint_folder_with_other_settings_is_refused_in_the_library(tmp_path):
    from bit_tf.training.checkpoints import find_resumable, write_progress

    settings = {"model": "BiT-S-R18x1", "total_steps": 8, "resolution": (16, 16)}
    write_progress(str(tmp_path), {"settings": settings, "step": 8, "finished": True})
    (tmp_path / "last.keras").write_bytes(b"stands for the run's model")
    # The same settings (tuples read back as lists): the finished run is found.
    path, progress = find_resumable(str(tmp_path), settings)
    assert path == str(tmp_path / "last.keras") and progress["finished"]
    with pytest.raises(RunSettingsError, match=r"total_steps: 8, now 9\). To start again"):
        find_resumable(str(tmp_path), dict(settings, total_steps=9))
    # overwrite: the old run's files go, and a new run starts.
    assert find_resumable(str(tmp_path), dict(settings, total_steps=9), overwrite=True) is None
    assert os.listdir(tmp_path) == []


USER_ERRORS = [
    # (command, flags, what the one line must name)
    ("bit_cli.finetune", ["--dataset=./photos"], "--dataset='./photos': no such folder"),
    ("bit_cli.finetune", ["--dataset=photoz"], "is neither a folder here nor a TFDS dataset"),
    ("bit_cli.finetune", ["--export_dir=notes.txt"], "--export_dir='notes.txt' is a file"),
    ("bit_cli.finetune", ["--model=BiT-M-R51x1"], "Unknown model name 'BiT-M-R51x1'"),
    ("bit_cli.finetune", ["--steps=-3"], "--steps must be positive, got -3"),
    ("bit_cli.distill", ["--batch_size=0"], "--batch_size must be positive, got 0"),
    ("bit_cli.distill", ["--mixup_alpha=-1"], "--mixup_alpha must not be negative, got -1"),
    ("bit_cli.export", ["--weights=gone.keras"], "Model file 'gone.keras' does not exist"),
    ("bit_cli.vtab", ["--tasks=dtd,flowers"], "unknown VTAB task(s) flowers; choose from"),
    ("bit_cli.vtab", ["--model=BiT-M-R51x1"], "Unknown model name 'BiT-M-R51x1'"),
    ("bit_cli.vtab", ["--mode=few_shot", "--shots=1,five"], "--shots=1,five must be a list of"),
    ("bit_cli.vtab", ["--weights=gone.keras"], "Model file 'gone.keras' does not exist"),
    ("bit_cli.vtab", ["--output_dir=notes.txt"], "--output_dir='notes.txt' is a file"),
    ("bit_cli.predict", ["--model=gone.keras", "cat.jpg"], "Model file 'gone.keras' does not"),
    ("bit_cli.predict", ["--class_names=names.txt", "cat.jpg"], "'names.txt': no such file"),
    ("bit_cli.export", ["--weights=."], "Checkpoint file '.' is a folder, not a .npz file"),
    (
        "bit_cli.export",
        ["--model=BiT-S-R50x1", "--image_size=-5"],
        "--image_size must be 0 (the default) or at least 8, got -5",
    ),
    # A folder where none can be made (here /proc, whose file system refuses new folders).
    ("bit_cli.distill", ["--export_dir=/proc/x"], "no folder can be made in /proc"),
    # absl's own flag errors: a value of the wrong type, an unknown flag.
    ("bit_cli.predict", ["--top_k=x", "cat.jpg"], "flag --top_k=x: invalid literal"),
    ("bit_cli.vtab", ["--stepz=1"], "Unknown command line flag 'stepz'"),
]


@pytest.mark.parametrize(("module", "flags", "named"), USER_ERRORS)
def test_a_user_error_is_one_line_with_status_2_and_nothing_written(module, flags, named, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    completed = run_command(module, *flags, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    program = "bit-" + module.split(".")[-1]
    lines = [line for line in completed.stderr.splitlines() if f"{program}: error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), completed.stderr
    assert named in lines[0]
    # Nothing else on stderr but TensorFlow's C++ log at the level these tests set (2: the
    # "failed call to cuInit" of a CUDA build without a GPU).
    native = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log messages before")
    others = [line for line in completed.stderr.strip().splitlines() if not native.match(line)]
    assert others == lines, completed.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_bit_tf_traceback_shows_the_traceback_of_a_user_error(tmp_path):
    environment = dict(ENVIRONMENT, BIT_TF_TRACEBACK="1")
    completed = subprocess.run(
        [sys.executable, "-m", "bit_cli.export", "--weights=gone.keras"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert "Traceback" in completed.stderr and "CheckpointError" in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("bit-export: error: Model file")


def test_bit_export_checks_the_class_names_before_writing_anything(official_checkpoint, tmp_path):
    # The fixture checkpoint has a head of 10 classes; two names cannot serve it.
    completed = run_command(
        "bit_cli.export",
        f"--weights={official_checkpoint}",
        "--kind=classification",
        "--export_dir=module",
        "--serving_dir=serving",
        "--image_size=32",
        "--class_names=cat,dog",
        cwd=tmp_path,
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    line = completed.stderr.strip().splitlines()[-1]
    assert line.startswith("bit-export: error: --class_names='cat,dog' gives 2 class names")
    assert "with 10 classes" in line
    assert os.listdir(tmp_path) == []  # the corrected command finds no module folder in its way


def test_signals_deferred_holds_sigint_and_sigterm_until_the_block_ends():
    from bit_tf.training.interruption import signals_deferred

    # What the handlers were before: SIGINT is ignored where the tests run in the background.
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with signals_deferred() as deferred:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handlers run here; nothing is raised
        finished = True
    assert finished and deferred.received == signal.SIGTERM
    assert {number: signal.getsignal(number) for number in before} == before
