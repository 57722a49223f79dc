"""Pre-training under real tf.distribute strategies, in subprocesses (logical CPU devices must
be configured before TensorFlow starts; multi-worker needs one process per worker)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _environment(**extra):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = REPOSITORY + os.pathsep + environment.get("PYTHONPATH", "")
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    environment["CUDA_VISIBLE_DEVICES"] = ""
    environment.update(extra)
    return environment


def _run_script(script: str, tmp_path, timeout=240, **extra) -> dict:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    completed = subprocess.run(
        [sys.executable, str(path)],
        env=_environment(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


MIRRORED_VERSUS_ONE_DEVICE = """
    from bit_tf.pretrain.recipe import configure_cpu_devices
    configure_cpu_devices(2)
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    import bit_tf
    from bit_tf.pretrain.recipe import make_optimizer, make_strategy, make_train_step

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, size=(8,)).astype("int32")
    head_kernel = 0.1 * rng.normal(size=(512, 5)).astype("float32")  # basic units: 512

    def one_update(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic",
                                     num_classes=5, input_shape=(32, 32, 3))
            optimizer = make_optimizer(0.1)
            optimizer.build(model.trainable_variables)
        model.get_layer("head").kernel.assign(head_kernel)
        before = [v.numpy().copy() for v in model.trainable_variables]

        def dataset_fn(context):
            dataset = tf.data.Dataset.from_tensor_slices((images, labels))
            return dataset.batch(context.get_per_replica_batch_size(8))

        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        step = make_train_step(strategy, model, optimizer, global_batch_size=8)
        outputs = step(iter(dataset), tf.constant(0))
        after = [v.numpy() for v in model.trainable_variables]
        return before, after, float(outputs["loss"]), int(optimizer.iterations.numpy())

    mirrored = make_strategy("mirrored")
    before_1, after_1, loss_1, steps_1 = one_update(make_strategy("default"))
    before_2, after_2, loss_2, steps_2 = one_update(mirrored)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "same_start": max(float(np.abs(a - b).max()) for a, b in zip(before_1, before_2)),
        "difference": max(float(np.abs(a - b).max()) for a, b in zip(after_1, after_2)),
        "update": max(float(np.abs(a - b).max()) for a, b in zip(after_1, before_1)),
        "losses": [loss_1, loss_2],
        "steps": [steps_1, steps_2],
    }))
"""


@pytest.mark.slow
def test_mirrored_update_over_two_cpu_devices_equals_one_device_update(tmp_path):
    result = _run_script(MIRRORED_VERSUS_ONE_DEVICE, tmp_path)
    assert result["replicas"] == 2
    assert result["same_start"] == 0.0
    assert result["update"] > 1e-3  # the step really moved the weights
    assert result["difference"] < 1e-5
    assert abs(result["losses"][0] - result["losses"][1]) < 1e-5
    assert result["steps"] == [1, 1]


MULTI_WORKER_TRAINING = """
    import json, os, sys
    import numpy as np
    import bit_tf
    from bit_tf.pretrain.recipe import PretrainConfig, pretrain, make_strategy

    strategy = make_strategy("multi_worker")
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    result = pretrain(PretrainConfig(
        model="BiT-S-R18x1", dataset=sys.argv[1], checkpoint_dir=sys.argv[2], num_classes=4,
        global_batch_size=8, train_steps=3, warmup_steps=1, base_learning_rate=0.1,
        image_size=16, units_per_block=(1, 1, 1, 1), checkpoint_every=2, log_every=1,
        shuffle_buffer=8), strategy=strategy)
    path = bit_tf.save_official_weights(result.model, f"{sys.argv[3]}/worker{task}.npz")
    print(json.dumps({"task": task, "step": result.step, "chief": result.is_chief,
                      "replicas": strategy.num_replicas_in_sync,
                      "loss": result.history[-1]["loss"]}))
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _write_images_tfrecord(path, count, num_classes):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(count):
            pixels = rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
            encoded = tf.io.encode_jpeg(pixels).numpy()
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[index % num_classes])
                ),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_end_with_the_same_weights(tmp_path):
    data = tmp_path / "train.tfrecord"
    _write_images_tfrecord(data, 32, 4)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(MULTI_WORKER_TRAINING))
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")
        workers.append(
            (
                subprocess.Popen(
                    [sys.executable, str(script), str(data), str(tmp_path / "ckpt"), str(tmp_path)],
                    env=_environment(TF_CONFIG=tf_config),
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    cwd=tmp_path,
                ),
                log,
            )
        )
    deadline = time.monotonic() + 240
    results = []
    try:
        for process, log in workers:
            stdout, _ = process.communicate(timeout=max(1, deadline - time.monotonic()))
            log.close()
            errors = (tmp_path / os.path.basename(log.name)).read_text()[-3000:]
            assert process.returncode == 0, errors
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()

    assert [result["step"] for result in results] == [3, 3]
    assert [result["chief"] for result in results] == [True, False]
    assert all(result["replicas"] == 2 for result in results)
    with np.load(tmp_path / "worker0.npz") as first, np.load(tmp_path / "worker1.npz") as second:
        assert sorted(first.files) == sorted(second.files)
        for key in first.files:
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    with (
        np.load(tmp_path / "ckpt" / "BiT-S-R18x1.npz") as written,
        np.load(tmp_path / "worker0.npz") as first,
    ):
        for key in first.files:
            np.testing.assert_array_equal(written[key], first[key], err_msg=key)
    summary = json.loads((tmp_path / "ckpt" / "summary.json").read_text())
    assert summary["step"] == 3
    assert not any(name.startswith(".worker") for name in os.listdir(tmp_path / "ckpt"))


def test_tpu_strategy_without_a_tpu_fails_fast_with_a_clear_message(tmp_path):
    data = tmp_path / "train.tfrecord"
    _write_images_tfrecord(data, 4, 2)
    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bit_cli.pretrain",
            "--strategy=tpu",
            f"--dataset={data}",
            f"--checkpoint_dir={tmp_path / 'ckpt'}",
        ],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 100, f"took {elapsed:.0f} s"  # fails fast, not after a long TPU search
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "bit-pretrain: error: No TPU found for --tpu='local'" in completed.stderr
    assert "--strategy=mirrored" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "ckpt").exists()


def test_unknown_strategy_is_refused_by_name():
    from bit_tf.pretrain.recipe import StrategyError, make_strategy

    with pytest.raises(StrategyError, match="warp_drive.*default, mirrored, multi_worker, tpu"):
        make_strategy("warp_drive")
