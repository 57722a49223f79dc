"""Run folders and their failures, made for real: one run per folder (two real processes, a
SIGKILLed holder), damaged run files, a full and a read-only disk (a small tmpfs in a user and
mount namespace), Ctrl-C during a TFDS download and during an export, and a half-written export
finished without --overwrite."""

import errno
import http.server
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
from test_reliability import ENVIRONMENT, REPO, run_command

import bit_tf
from bit_tf.training import run_lock
from bit_tf.training.checkpoints import (
    DamagedRunFileError,
    atomic_save,
    load_resumable,
    read_progress,
    write_progress,
)
from bit_tf.training.file_errors import FileWriteError

RUN_LOCK_FILE = os.path.join(REPO, "bit_tf", "training", "run_lock.py")

# A process that holds a folder through bit_tf.training.run_lock (loaded from its file: it needs
# only the standard library), says so, and waits to be killed.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
run_lock.acquire(sys.argv[2], program="the first run")
print("holding", flush=True)
time.sleep(600)
"""


def start_holder(folder, cwd) -> subprocess.Popen:
    """A real process holding `folder`, once it says so."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, RUN_LOCK_FILE, str(folder)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    return holder


def one_error_line(completed: subprocess.CompletedProcess, program: str) -> str:
    """The one `<program>: error: ...` line of a command that ended with status 2."""
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.splitlines() if line.startswith(f"{program}:")]
    assert len(lines) == 1, completed.stderr[-3000:]
    assert completed.stderr.strip().splitlines()[-1] == lines[0]
    return lines[0]


def snapshot(folder) -> dict:
    """{path: (size, mtime)} of every file under `folder`."""
    return {
        os.path.join(root, name): (os.stat(os.path.join(root, name)).st_size,)
        + (os.stat(os.path.join(root, name)).st_mtime_ns,)
        for root, _, names in os.walk(folder)
        for name in names
    }


# -- one run per folder ---------------------------------------------------------------------------


def test_a_second_run_into_a_held_folder_is_refused_in_one_line_naming_the_first(tmp_path):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "progress.json").write_text('{"the first run": 1}')
    holder = start_holder("out", tmp_path)
    before = snapshot(tmp_path / "out")
    try:
        completed = run_command("bit_cli.finetune", "--export_dir=out", "--steps=2", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    line = one_error_line(completed, "bit-finetune")
    assert line.startswith("bit-finetune: error: --export_dir=out is in use by another run, ")
    assert f"process {holder.pid} on host " in line and "(the first run, started " in line
    assert snapshot(tmp_path / "out") == before


def test_a_lock_left_by_a_killed_run_is_taken_over_and_released_at_the_end(tmp_path, caplog):
    holder = start_holder(tmp_path / "run", tmp_path)
    with pytest.raises(run_lock.RunLockedError, match=f"process {holder.pid} on host"):
        with run_lock.holding(str(tmp_path / "run")):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".run.lock").exists()  # what SIGKILL leaves: a file, no lock
    with caplog.at_level(logging.WARNING, logger="bit_tf.training.run_lock"):
        with run_lock.holding(str(tmp_path / "run"), program="the second run"):
            held = json.loads((tmp_path / ".run.lock").read_text())
            # The same process may hold it again (a command and the library call it makes).
            with run_lock.holding(str(tmp_path / "run")):
                pass
            assert (tmp_path / ".run.lock").exists()
    assert held["pid"] == os.getpid() and held["program"] == "the second run"
    assert f"held by process {holder.pid}" in caplog.text and "takes it over" in caplog.text
    assert not (tmp_path / ".run.lock").exists()


def test_the_library_refuses_a_checkpoint_folder_another_process_holds(tmp_path):
    holder = start_holder(tmp_path / "runs", tmp_path)
    try:
        images = np.zeros((4, 16, 16, 3), np.float32)
        with pytest.raises(run_lock.RunLockedError, match=f"checkpoint_dir=.*process {holder.pid}"):
            bit_tf.finetune(
                "BiT-S-R18x1", (images, [0, 1, 0, 1]), checkpoint_dir=str(tmp_path / "runs")
            )
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# -- damaged run files ----------------------------------------------------------------------------

DAMAGED_PROGRESS = [
    # (contents, what the message says)
    (b'{"settings": {"model": "BiT-S-R18x1"}, "st', "not JSON"),
    (bytes(range(256)) * 4, "not JSON"),
    (b"", "it is empty"),
    (b"[1, 2]", "it holds a list"),
    (b'{"settings": {}, "step": "12", "finished": false}', "'step' is '12', not a whole number"),
    (b'{"settings": {}, "step": 3, "finished": "no"}', "'finished' is 'no', not true or false"),
    (b'{"settings": [], "step": 3, "finished": true}', "'settings' is [], not an object"),
    (b'{"settings": {}, "step": -4, "finished": false}', "'step' is -4, a negative step"),
]


@pytest.mark.parametrize(("contents", "named"), DAMAGED_PROGRESS)
def test_a_damaged_progress_file_is_named_with_the_way_out(contents, named, tmp_path):
    (tmp_path / "progress.json").write_bytes(contents)
    with pytest.raises(DamagedRunFileError) as raised:
        read_progress(str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'progress.json'} is damaged (")
    assert named in message and "overwrite=True (the commands' --overwrite)" in message


def test_bit_finetune_reports_a_damaged_progress_file_in_one_line(tmp_path):
    checkpoints = tmp_path / "out" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "progress.json").write_text('{"settings": {"model": "BiT-S-R26x1"}, "ste')
    completed = run_command("bit_cli.finetune", "--export_dir=out", cwd=tmp_path)
    line = one_error_line(completed, "bit-finetune")
    assert "out/checkpoints/progress.json is damaged (not JSON" in line
    assert line.endswith(
        "(the commands' --overwrite), which replaces its checkpoints, or use another folder."
    )
    assert sorted(os.listdir(checkpoints)) == ["progress.json"]


def tiny_classifier():
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_a_damaged_last_checkpoint_falls_back_to_the_best_one(tmp_path, caplog):
    model = tiny_classifier()
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(3)
    atomic_save(model, str(tmp_path / "best.keras"))
    (tmp_path / "last.keras").write_bytes((tmp_path / "best.keras").read_bytes()[:5000])
    progress = {"settings": {"total_steps": 8}, "step": 6, "finished": False, "best_step": 3}
    write_progress(str(tmp_path), progress)

    with caplog.at_level(logging.WARNING, logger="bit_tf.finetune"):
        restored, resumed = load_resumable(
            str(tmp_path / "last.keras"), read_progress(str(tmp_path))
        )
    assert f"{tmp_path / 'last.keras'} cannot be read (" in caplog.text
    assert f"Using {tmp_path / 'best.keras'} instead" in caplog.text
    assert "Resuming from" in caplog.text and "at step 3 of 8" in caplog.text
    assert resumed["step"] == 3 and not resumed["finished"]
    assert int(restored.optimizer.iterations) == 3

    # Neither checkpoint whole: both are named, and the way out.
    (tmp_path / "best.keras").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(DamagedRunFileError) as raised:
        load_resumable(str(tmp_path / "last.keras"), progress)
    message = str(raised.value)
    assert "last.keras cannot be read" in message and "best.keras cannot be read" in message
    assert "No whole checkpoint is left" in message and "--overwrite" in message


# -- a full or read-only disk: a small tmpfs in a user and mount namespace -------------------------


def namespace_problem() -> str | None:
    """Why a tmpfs cannot be mounted in a new user and mount namespace here, else None."""
    if shutil.which("unshare") is None:
        return "the unshare program (util-linux) is not installed"
    try:
        probe = subprocess.run(
            # A tmpfs, and a user namespace inside (where root is no longer root to files).
            [
                "unshare",
                "-rm",
                "sh",
                "-c",
                "mount -t tmpfs -o size=64k tmpfs /mnt && unshare -U true",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError as error:
        return f"unshare cannot run ({error})"
    if probe.returncode != 0:
        return (
            "unshare -rm, mount -t tmpfs and unshare -U in it are not allowed here "
            f"({probe.stderr.strip()})"
        )
    return None


needs_namespace = pytest.mark.skipif(
    namespace_problem() is not None,
    reason=f"a full or read-only disk is made as a tmpfs in a namespace: {namespace_problem()}",
)


def in_namespace(mounts: dict, command: list, cwd, **options) -> subprocess.CompletedProcess:
    """Runs `command` in a new user and mount namespace where each folder of `mounts` is a new
    tmpfs ({folder: "size=256k" or "ro,size=64k"}); the tmpfs go when the command ends."""
    script = " && ".join(
        f"mkdir -p {folder} && mount -t tmpfs -o {options_} tmpfs {folder}"
        for folder, options_ in mounts.items()
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{script} && exec "$@"', "sh", *command],
        cwd=cwd,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=options.get("timeout", 300),
    )


# Run inside the namespaces: each writer of the package meets a full ("full", 256 KiB) and a
# read-only ("readonly") tmpfs, and a folder it may not write to ("forbidden", mode 555, which
# root may not write either in a user namespace of its own); what it raises and what it leaves
# there is printed as JSON.
WRITERS = """
import json, os, sys
import bit_tf, hub_export
from bit_tf.training.file_errors import FileWriteError
from bit_tf.training.checkpoints import atomic_save, write_progress

model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=2)
hub_export.export_module(model, "module")  # on the test's own disk, for publishing
writers = {  # the publish's card stays: it comes last
    "weights": lambda folder: bit_tf.save_official_weights(model, f"{folder}/weights.npz"),
    "checkpoint": lambda folder: atomic_save(model, f"{folder}/last.keras"),
    "progress": lambda folder: write_progress(folder, {"step": 1, "padding": "x" * 400_000}),
    "export": lambda folder: hub_export.export_module(model, f"{folder}/module"),
    "publish": lambda folder: hub_export.publish("module", f"{folder}/hub", "bit/tiny", 1),
}
results = {}
for folder in ("full", "readonly", "forbidden"):
    for name, write in writers.items():
        try:
            write(folder)
            outcome = {"raised": None}
        except FileWriteError as error:
            outcome = {"raised": error.errno, "message": str(error)}
        left = [os.path.relpath(os.path.join(root, file), folder)
                for root, _, files in os.walk(folder) for file in files]
        results[f"{folder} {name}"] = {**outcome, "left": sorted(left)}
print(json.dumps(results))
"""


@needs_namespace
def test_the_writers_remove_what_a_full_read_only_or_forbidden_disk_cut_and_name_the_target(
    tmp_path,
):
    (tmp_path / "forbidden").mkdir(mode=0o555)
    completed = in_namespace(
        {"full": "size=256k", "readonly": "ro,size=64k"},
        ["unshare", "-U", sys.executable, "-c", WRITERS],
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    targets = {
        "checkpoint": "last.keras",
        "progress": "progress.json",
        "export": "module",
        "publish": "hub/bit/tiny/1.tar.gz",
        "weights": "weights.npz",
    }
    for name, target in targets.items():
        full, readonly = results[f"full {name}"], results[f"readonly {name}"]
        assert full["raised"] == errno.ENOSPC, (name, full)
        assert full["message"].startswith(f"Could not write full/{target}: no space is left")
        assert "The partial " in full["message"] and " was removed; nothing was" in full["message"]
        assert "Free some space" in full["message"]
        # Nothing partial is left; only the publish's model card, which is whole.
        assert full["left"] == (["hub/bit/tiny/1.md"] if name == "publish" else []), full
        assert readonly["raised"] == errno.EROFS, (name, readonly)
        target = "hub/bit/tiny/1.md" if name == "publish" else target  # the card comes first
        assert f"readonly/{target}: the file system is read-only" in readonly["message"]
        assert "Nothing was written there. Choose a folder you can write to" in readonly["message"]
        assert readonly["left"] == []
        forbidden = results[f"forbidden {name}"]
        assert forbidden["raised"] == errno.EACCES, (name, forbidden)
        assert f"forbidden/{target}: permission is denied" in forbidden["message"]
        assert forbidden["left"] == []


@needs_namespace
def test_a_read_only_export_folder_is_one_line_before_any_training(tmp_path):
    script = (
        f"{sys.executable} -m bit_cli.finetune --export_dir=out --steps=2 2> stderr.txt; "
        "echo $? > status.txt"
    )
    completed = in_namespace({"out": "ro,size=64k"}, ["sh", "-c", script], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    stderr = (tmp_path / "stderr.txt").read_text()
    status = int((tmp_path / "status.txt").read_text())
    line = one_error_line(subprocess.CompletedProcess([], status, "", stderr), "bit-finetune")
    assert line == (
        "bit-finetune: error: Could not write out: the file system is read-only. "
        "Choose a folder you can write to."
    )
    assert "Epoch" not in stderr


def test_a_checkpoint_the_disk_refuses_leaves_the_one_before_it_whole(tmp_path):
    # The kernel refuses writes beyond RLIMIT_FSIZE (EFBIG; Python ignores SIGXFSZ) from the
    # second validation on: the checkpoints of step 2 cannot be written.
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)

    class SmallFiles(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limit[1]))

    images = np.random.default_rng(0).uniform(size=(16, 16, 16, 3)).astype(np.float32)
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)
    try:
        with pytest.raises(FileWriteError) as raised:
            bit_tf.finetune(
                backbone,
                (images, np.arange(16) % 2),
                (images[:4], np.arange(4) % 2),
                batch_size=4,
                steps=4,
                validation_every=2,
                checkpoint_dir=str(tmp_path),
                callbacks=[SmallFiles()],
                resize=16,
                crop=16,
                jit_compile=False,
                verbose=0,
            )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert raised.value.errno == errno.EFBIG
    message = str(raised.value)
    assert message.startswith(f"Could not write {tmp_path}/") and "(ulimit -f)" in message
    assert "is left as it was" in message
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "last.keras", "progress.json"]
    assert read_progress(str(tmp_path))["step"] == 2
    last = keras.saving.load_model(tmp_path / "last.keras")
    assert int(last.optimizer.iterations) == 2


# -- Ctrl-C -----------------------------------------------------------------------------------

# The command as a terminal runs it: Ctrl-C (SIGINT) raises KeyboardInterrupt, also where the
# tests run with SIGINT ignored (in the background).
INTERRUPTIBLE = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = sys.argv[1:]
runpy.run_module("bit_cli." + sys.argv[0].split("-", 1)[1], run_name="__main__")
"""


class _SilentServer(http.server.BaseHTTPRequestHandler):
    """Answers every download with a 503, as an overloaded server does: TFDS retries it."""

    requests = 0

    def do_GET(self):  # noqa: N802 - the http.server API
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# A TFDS dataset whose download is the loopback server above; bit-vtab few-shot reads it.
RETRIED_DOWNLOAD = """
import signal, sys
import tensorflow_datasets as tfds
signal.signal(signal.SIGINT, signal.default_int_handler)
URL = sys.argv[1]

class RetriedDownload(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        image, label = tfds.features.Image(shape=(8, 8, 3)), tfds.features.ClassLabel(num_classes=2)
        features = tfds.features.FeaturesDict({"image": image, "label": label})
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        dl_manager.download(URL)
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        yield from ()

from bit_cli import vtab
sys.argv = ["bit-vtab", "--mode=few_shot", "--dataset=retried_download", "--data_dir=tfds",
            "--output_dir=results"]
vtab.run()
"""


def test_ctrl_c_ends_bit_vtab_at_once_while_tfds_retries_a_download(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SilentServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/data.tar.gz"
    # Run from a file: TFDS looks for the file of the module that defines a builder.
    (tmp_path / "retried_download.py").write_text(RETRIED_DOWNLOAD)
    process = subprocess.Popen(
        [sys.executable, "retried_download.py", url],
        cwd=tmp_path,
        env=ENVIRONMENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _SilentServer.requests < 2 and time.monotonic() < deadline:  # retrying now
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
        server.shutdown()
        server.server_close()
    assert process.returncode == 130, stderr[-3000:]
    assert took < 10, f"{took:.1f} s after Ctrl-C"  # promptly: TFDS alone retries for minutes
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "bit-vtab: stopped by SIGINT (Ctrl-C)."


def test_ctrl_c_while_a_command_starts_is_one_line_and_status_130(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, "bit-export", "--model=BiT-S-R50x1"],
        cwd=tmp_path,
        env=ENVIRONMENT,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # TensorFlow takes seconds to load
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "bit-export: stopped by SIGINT (Ctrl-C)."


@pytest.mark.slow
def test_an_export_stopped_by_ctrl_c_is_finished_without_redoing_the_module(
    official_checkpoint, tmp_path
):
    flags = [
        f"--weights={official_checkpoint}",
        "--kind=classification",
        "--export_dir=module",
        "--serving_dir=serving",
        "--image_size=32",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, "bit-export", *flags],
        cwd=tmp_path,
        env=ENVIRONMENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("module: "):  # the module is written; the serving model is next
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "bit-export: stopped by SIGINT (Ctrl-C)."
    # No half-written version, no lock, and no serving folder the command made and left empty.
    assert not (tmp_path / "serving").exists()
    module = snapshot(tmp_path / "module")

    # The same command again: the module is this model's, so it is kept and the rest written.
    again = run_command("bit_cli.export", *flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "module: module (already written from these weights; kept)" in again.stdout
    assert "serving: serving/1" in again.stdout
    assert snapshot(tmp_path / "module") == module
    assert os.listdir(tmp_path / "serving") == ["1"]

    # Only a module of these weights and kind is kept; any other is refused, as before.
    from bit_cli.common import build_model
    from bit_cli.export import holds_module_of

    model = build_model("", official_checkpoint)
    assert holds_module_of(str(tmp_path / "module"), model, "classification")
    assert not holds_module_of(str(tmp_path / "module"), model, "feature_vector")
    model.get_layer("head").bias.assign(np.ones(10, np.float32))
    assert not holds_module_of(str(tmp_path / "module"), model, "classification")


@pytest.mark.slow
def test_bit_vtab_reads_the_architecture_of_an_official_checkpoint(official_checkpoint, tmp_path):
    # Without --model, the file's own architecture (R14x1 here), as bit-finetune reads it.
    flags = ["--mode=few_shot", "--dataset=digits", f"--weights={official_checkpoint}"]
    flags += ["--shots=1", "--seeds=0", "--steps=1", "--batch_size=4", "--resize=16"]
    flags += ["--crop=16", "--max_test_examples=8", "--output_dir=results"]
    completed = run_command("bit_cli.vtab", *flags, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("few-shot median accuracy: 1-shot ")


def test_bit_vtab_few_shot_runs_on_the_embedded_digits(tmp_path):
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)
    backbone.save(tmp_path / "backbone.keras")
    flags = [
        "--mode=few_shot",
        "--dataset=digits",
        "--weights=backbone.keras",
        "--shots=1",
        "--seeds=0",
        "--steps=1",
        "--batch_size=4",
        "--resize=16",
        "--crop=16",
        "--max_test_examples=8",
        "--output_dir=results",
    ]
    completed = run_command("bit_cli.vtab", *flags, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("few-shot median accuracy: 1-shot ")
    files = [
        tmp_path / "results" / "few_shot_results.md",
        tmp_path / "results" / "few_shot_results.json",
    ]
    assert all(path.exists() for path in files)
    before = [(path.read_bytes(), path.stat().st_mtime_ns) for path in files]
    # Run again with other shots (and weights that are gone): refused in one line before the
    # weights are read or a model trained; the results are left as they were.
    os.remove(tmp_path / "backbone.keras")
    refused = run_command("bit_cli.vtab", *flags, "--shots=1,2", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    # The one line of bit-vtab (TensorFlow's own start-up logging aside), last.
    (line,) = [line for line in refused.stderr.splitlines() if "bit-vtab: error:" in line]
    assert refused.stderr.strip().splitlines()[-1] == line
    assert line.startswith("bit-vtab: error: ") and "few_shot_results.md already exists" in line
    assert "--overwrite" in line
    assert [(path.read_bytes(), path.stat().st_mtime_ns) for path in files] == before


def test_a_disk_error_anywhere_in_a_command_is_one_sentence():
    from bit_cli.common import disk_error_message

    message = disk_error_message(PermissionError(errno.EACCES, "Permission denied", "out/logs"))
    assert message == (
        "Could not write out/logs: permission is denied. Choose a folder you can write to, or "
        "change its permissions."
    )
    import tensorflow as tf

    error = tf.errors.ResourceExhaustedError(
        None, None, "out/variables_temp/part-0.tempstate1; No space left on device [Op:SaveV2]"
    )
    assert disk_error_message(error).startswith("No space is left on the device (")
    assert disk_error_message(ValueError("a bug")) is None
