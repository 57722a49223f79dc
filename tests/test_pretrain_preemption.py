"""Interrupted pre-training loses nothing: a run killed with SIGKILL after its first checkpoint,
then stopped with SIGTERM, then finished, ends exactly where an uninterrupted run ends."""

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

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 16
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


def _start(data, checkpoint_dir, log_path, hub_export_dir=""):
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
        "--global_batch_size=8",
        f"--train_steps={TOTAL_STEPS}",
        "--warmup_steps=3",
        "--base_learning_rate=0.02",
        "--image_size=16",
        "--shuffle_buffer=16",
        "--checkpoint_every=4",
        "--log_every=1",
        "--seed=7",
        f"--checkpoint_dir={checkpoint_dir}",
        f"--hub_export_dir={hub_export_dir}",
    ]
    log = open(log_path, "w")
    return subprocess.Popen(command, env=environment, stdout=log, stderr=log, cwd=REPOSITORY)


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


def test_sigkill_then_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "train.tfrecord"
    _write_tfrecord(data)
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    reference = _start(data, reference_dir, tmp_path / "reference.log")
    first = _start(data, interrupted_dir, tmp_path / "first.log")
    try:
        # 1. SIGKILL right after the first checkpoint: nothing can be saved on the way out.
        _wait_for_checkpoint_after(first, interrupted_dir, 0)
        first.send_signal(signal.SIGKILL)
        status, _ = _finish(first, tmp_path / "first.log")
        assert status == -signal.SIGKILL
        killed_at = _checkpoint_steps(interrupted_dir)[-1]
        assert killed_at < TOTAL_STEPS

        # 2. Resume; SIGTERM after its first new checkpoint: it checkpoints and exits cleanly.
        second = _start(data, interrupted_dir, tmp_path / "second.log")
        _wait_for_checkpoint_after(second, interrupted_dir, killed_at)
        second.send_signal(signal.SIGTERM)
        status, log = _finish(second, tmp_path / "second.log")
        assert status == 128 + signal.SIGTERM, log[-3000:]
        assert "Traceback" not in log
        stopped = re.search(r"stopped by SIGTERM at step (\d+)", log)
        assert stopped, log[-3000:]
        stopped_at = int(stopped.group(1))
        assert killed_at < stopped_at < TOTAL_STEPS
        assert _checkpoint_steps(interrupted_dir)[-1] == stopped_at

        # 3. The same command again finishes the run from where it stopped.
        third = _start(data, interrupted_dir, tmp_path / "third.log", tmp_path / "hub")
        status, log = _finish(third, tmp_path / "third.log")
        assert status == 0, log[-3000:]
        status, log = _finish(reference, tmp_path / "reference.log")
        assert status == 0, log[-3000:]
    finally:
        for process in (reference, first):
            if process.poll() is None:
                process.kill()

    resumed, uninterrupted = _summary(interrupted_dir), _summary(reference_dir)
    assert uninterrupted["step"] == resumed["step"] == TOTAL_STEPS
    assert uninterrupted["resumed_from_step"] == 0
    assert resumed["resumed_from_step"] == stopped_at
    # Every step trained exactly once: the last run trained only the steps that were missing.
    assert [entry["step"] for entry in resumed["history"]] == list(
        range(stopped_at + 1, TOTAL_STEPS + 1)
    )
    losses = {entry["step"]: entry["loss"] for entry in uninterrupted["history"]}
    for entry in resumed["history"]:
        np.testing.assert_allclose(entry["loss"], losses[entry["step"]], rtol=1e-5)
    weights = f"{MODEL}.npz"
    with np.load(reference_dir / weights) as expected, np.load(interrupted_dir / weights) as got:
        assert sorted(expected.files) == sorted(got.files)
        for key in expected.files:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)

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
