"""Interrupted pre-training loses nothing: a run of 4 steps per loop killed with SIGKILL after
its first checkpoint, then hit by three SIGINTs 0.3 s apart (the last ones while it writes its
checkpoint), then finished, ends exactly where an uninterrupted run of 1 step per loop ends; and
what a run shows while it runs (log line, TensorBoard scalars)."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 24
CHECKPOINT_EVERY = 6
LOG_EVERY = 4
GLOBAL_BATCH_SIZE = 8
MODEL = "BiT-S-R18x1"


def _write_tfrecord(path, count=48, num_classes=4):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(count):
            encoded = tf.io.encode_jpeg(rng.integers(0, 256, (30, 26, 3), dtype=np.uint8))
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[encoded.numpy()])
                ),
                "image/class/label": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[index % num_classes])
                ),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )


def _sigint_as_default():
    # SIGINT is ignored where tests run in the background; a user's shell passes the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(data, checkpoint_dir, log_path, steps_per_loop, log_every=LOG_EVERY, hub_export_dir=""):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    environment["PYTHONPATH"] = REPOSITORY + os.pathsep + environment.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "bit_cli.pretrain",
        f"--model={MODEL}",
        "--units_per_block=1,1,1,1",
        f"--dataset={data}",
        "--num_classes=4",
        f"--global_batch_size={GLOBAL_BATCH_SIZE}",
        f"--train_steps={TOTAL_STEPS}",
        "--warmup_steps=3",
        "--base_learning_rate=0.02",
        "--image_size=16",
        "--shuffle_buffer=16",
        f"--checkpoint_every={CHECKPOINT_EVERY}",
        f"--log_every={log_every}",
        f"--steps_per_loop={steps_per_loop}",
        "--seed=7",
        f"--checkpoint_dir={checkpoint_dir}",
        f"--hub_export_dir={hub_export_dir}",
    ]
    log = open(log_path, "w")
    return subprocess.Popen(
        command,
        env=environment,
        stdout=log,
        stderr=log,
        cwd=REPOSITORY,
        preexec_fn=_sigint_as_default,
    )


def _checkpoint_steps(checkpoint_dir):
    names = glob.glob(os.path.join(checkpoint_dir, "ckpt-*.index"))
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", name).group(1)) for name in names)


def _wait_for_checkpoint_after(process, checkpoint_dir, step, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = _checkpoint_steps(checkpoint_dir)
        if steps and steps[-1] > step:
            return steps[-1]
        assert process.poll() is None, f"run ended (status {process.returncode}) too early"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {step} within {timeout} s")


def _finish(process, log_path, timeout=240):
    process.wait(timeout=timeout)
    return process.returncode, open(log_path).read()


def _summary(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, "summary.json")) as stream:
        return json.load(stream)


def _scalars(logdir):
    """{tag: {step: value}} of the TensorBoard event files under `logdir`/train."""
    import tensorflow as tf

    scalars = {}
    for path in sorted(glob.glob(os.path.join(logdir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    return scalars


def test_loops_of_steps_survive_sigkill_and_three_sigints_and_match_one_step_calls(tmp_path):
    data = tmp_path / "train.tfrecord"
    _write_tfrecord(data)
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    reference = _start(
        data, reference_dir, tmp_path / "reference.log", steps_per_loop=1, log_every=1
    )
    first = _start(data, interrupted_dir, tmp_path / "first.log", steps_per_loop=4)
    try:
        # 1. SIGKILL right after the first checkpoint: nothing can be saved on the way out.
        _wait_for_checkpoint_after(first, interrupted_dir, 0)
        first.send_signal(signal.SIGKILL)
        status, _ = _finish(first, tmp_path / "first.log")
        assert status == -signal.SIGKILL
        killed_at = _checkpoint_steps(interrupted_dir)[-1]
        assert killed_at < TOTAL_STEPS

        # 2. Resume; after its first new checkpoint, Ctrl-C three times, 0.3 s apart: the first
        # asks for a checkpoint at the end of the loop, the others come while it is written.
        second = _start(data, interrupted_dir, tmp_path / "second.log", steps_per_loop=4)
        _wait_for_checkpoint_after(second, interrupted_dir, killed_at)
        # A small checkpoint can be written, and the run gone, before the next press; a press
        # that comes after the loop has stopped is held by the command until its files are
        # written. Either way: no traceback, status 130, a whole checkpoint.
        for _ in range(3):
            if second.poll() is not None:
                break
            second.send_signal(signal.SIGINT)
            time.sleep(0.3)
        status, log = _finish(second, tmp_path / "second.log")
        assert status == 128 + signal.SIGINT, log[-3000:]
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
        stopped = re.search(r"SIGINT received: stopped at step (\d+)", log)
        assert stopped, log[-3000:]
        stopped_at = int(stopped.group(1))
        assert killed_at < stopped_at <= TOTAL_STEPS
        assert _checkpoint_steps(interrupted_dir)[-1] == stopped_at

        # 3. The same command again finishes the run from where it stopped.
        third = _start(
            data,
            interrupted_dir,
            tmp_path / "third.log",
            steps_per_loop=4,
            hub_export_dir=tmp_path / "hub",
        )
        status, log = _finish(third, tmp_path / "third.log")
        assert status == 0, log[-3000:]
        status, reference_log = _finish(reference, tmp_path / "reference.log")
        assert status == 0, reference_log[-3000:]
    finally:
        for process in (reference, first):
            if process.poll() is None:
                process.kill()

    resumed, uninterrupted = _summary(interrupted_dir), _summary(reference_dir)
    assert uninterrupted["step"] == resumed["step"] == TOTAL_STEPS
    assert uninterrupted["resumed_from_step"] == 0
    assert resumed["resumed_from_step"] == stopped_at
    # Every step trained exactly once, in loops of 4 steps as in calls of 1 step: the mean loss
    # of each logged window of the resumed run is the reference's over the same steps.
    steps = list(range(1, TOTAL_STEPS + 1))
    assert [entry["step"] for entry in uninterrupted["history"]] == steps
    losses = {entry["step"]: entry["loss"] for entry in uninterrupted["history"]}
    # The resumed run's summary keeps what the session stopped by Ctrl-C logged (the one
    # killed by SIGKILL wrote none), then its own windows.
    logged = [entry["step"] for entry in resumed["history"]]
    assert logged == sorted(set(logged)), logged
    window_start = stopped_at
    for entry in resumed["history"]:
        if entry["step"] <= stopped_at:
            continue
        window = range(window_start + 1, entry["step"] + 1)
        expected = sum(losses[step] for step in window) / len(window)
        np.testing.assert_allclose(entry["loss"], expected, rtol=1e-5, err_msg=str(window))
        window_start = entry["step"]
    assert window_start == TOTAL_STEPS
    weights = f"{MODEL}.npz"
    with np.load(reference_dir / weights) as expected, np.load(interrupted_dir / weights) as got:
        assert sorted(expected.files) == sorted(got.files)
        for key in expected.files:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)

    # Watching the run: images/s and the time left in the log, TensorBoard scalars by step.
    line = re.search(
        rf"step {TOTAL_STEPS}/{TOTAL_STEPS} loss [\d.]+ top-1 [\d.]+ lr [\d.]+ "
        r"([\d.]+) images/s (\d+:\d\d:\d\d) left",
        reference_log,
    )
    assert line and float(line.group(1)) > 0 and line.group(2) == "0:00:00", reference_log[-2000:]
    scalars = _scalars(reference_dir / "logs")
    assert set(scalars) == {"loss", "top1", "learning_rate", "images_per_second", "examples_seen"}
    assert all(sorted(values) == steps for values in scalars.values())
    for entry in uninterrupted["history"]:
        step = entry["step"]
        np.testing.assert_allclose(scalars["loss"][step], entry["loss"], rtol=1e-6)
        np.testing.assert_allclose(scalars["top1"][step], entry["metric"], rtol=1e-6)
        np.testing.assert_allclose(
            scalars["learning_rate"][step], entry["learning_rate"], rtol=1e-6
        )
        assert scalars["examples_seen"][step] == step * GLOBAL_BATCH_SIZE
        assert scalars["images_per_second"][step] > 0
    # The resumed run's curves go on at the global step.
    assert max(_scalars(interrupted_dir / "logs")["examples_seen"]) == TOTAL_STEPS

    # The finished run also wrote the backbone as a TF-Hub feature-vector module.
    import tensorflow as tf

    import bit_tf

    backbone = bit_tf.create_model(MODEL, num_classes=None, units_per_block=(1, 1, 1, 1))
    bit_tf.load_official_weights(backbone, str(interrupted_dir / weights))
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    module = tf.saved_model.load(str(tmp_path / "hub"))
    np.testing.assert_allclose(
        module(images).numpy(), backbone(images).numpy(), rtol=1e-4, atol=1e-5
    )


def test_a_signal_again_while_stopping_is_reported_and_changes_nothing(caplog):
    from bit_tf.pretrain.recipe import stop_signals
    from bit_tf.training.signals import SIGNALS

    before = {number: signal.getsignal(number) for number in SIGNALS}
    with caplog.at_level("WARNING", logger="bit_tf.pretrain"), stop_signals() as stop:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here
    assert stop.received == signal.SIGINT
    messages = [record.getMessage() for record in caplog.records]
    assert sum("SIGINT received again" in message for message in messages) == 2, messages
    assert {number: signal.getsignal(number) for number in before} == before
