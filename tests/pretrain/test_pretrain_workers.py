"""A lost worker, done for real: two `bit-pretrain --strategy=multi_worker` processes on
127.0.0.1, one of them killed (SIGKILL) or frozen (SIGSTOP: a hung host whose connections stay
open). The survivor stops within the coordination service's time bound and ends with one line
naming the lost worker and the last checkpoint; the same commands started again resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from test_pretrain_distributed import _environment, _free_ports, _write_images_tfrecord

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 12
#: The heartbeat timeout the tests give (--heartbeat_timeout), in seconds.
HEARTBEAT_TIMEOUT = 4.0
#: What the survivor may take on top of the heartbeat timeout to notice and exit (a loaded CI
#: machine: two workers on two cores).
EXIT_ALLOWANCE = 20.0
EXIT_WORKER_LOST = 75


def _start_workers(tmp_path, data, checkpoint_dir, ports, run_name):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    command = [
        sys.executable,
        "-m",
        "bit_cli.pretrain",
        "--strategy=multi_worker",
        "--model=BiT-S-R18x1",
        "--units_per_block=1,1,1,1",
        f"--dataset={data}",
        "--num_classes=4",
        "--global_batch_size=8",
        f"--train_steps={TOTAL_STEPS}",
        "--warmup_steps=1",
        "--base_learning_rate=0.01",
        "--image_size=16",
        "--shuffle_buffer=8",
        "--checkpoint_every=2",
        "--log_every=1",
        f"--heartbeat_timeout={HEARTBEAT_TIMEOUT}",
        f"--checkpoint_dir={checkpoint_dir}",
        "--hub_export_dir=",
        "--logdir=",
    ]
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log_path = tmp_path / f"{run_name}-worker{index}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command,
                env=_environment(TF_CONFIG=tf_config),
                stdout=log,
                stderr=log,
                cwd=REPOSITORY,
            )
        workers.append((process, log_path))
    return workers


def _checkpoint_steps(checkpoint_dir):
    """The steps of the checkpoints that the `checkpoint` state file lists, as the workers
    find them (a ckpt-N.index exists a moment before the state file, replaced atomically,
    lists it)."""
    state = os.path.join(checkpoint_dir, "checkpoint")
    if not os.path.exists(state):
        return []
    with open(state) as file:
        listed = re.findall(r'all_model_checkpoint_paths: ".*?ckpt-(\d+)"', file.read())
    return sorted({int(step) for step in listed})


def _wait_for_a_checkpoint(workers, checkpoint_dir, timeout=200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _checkpoint_steps(checkpoint_dir):
            return
        for process, log_path in workers:
            assert process.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint within {timeout} s")


def _kill_all(workers):
    for process, _ in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()


def _lose_a_worker(tmp_path, victim, how):
    """Starts two workers, hits worker `victim` with signal `how` after the first checkpoint,
    and returns (seconds until the survivor ended, its exit status, its log, ports)."""
    data = tmp_path / "train.tfrecord"
    _write_images_tfrecord(data, 32, 4)
    checkpoint_dir = tmp_path / "ckpt"
    ports = _free_ports(2)
    workers = _start_workers(tmp_path, data, checkpoint_dir, ports, "first")
    survivor, survivor_log = workers[1 - victim]
    try:
        _wait_for_a_checkpoint(workers, checkpoint_dir)
        workers[victim][0].send_signal(how)
        hit = time.monotonic()
        survivor.wait(timeout=HEARTBEAT_TIMEOUT + 60)
        seconds = time.monotonic() - hit
    finally:
        _kill_all(workers)
    return seconds, survivor.returncode, survivor_log.read_text(), ports


def _last_line(log):
    return log.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_crashed_worker_is_named_by_the_survivor_and_a_restart_resumes(tmp_path):
    seconds, status, log, ports = _lose_a_worker(tmp_path, victim=1, how=signal.SIGKILL)

    # A killed worker's connections break: the chief notices within the heartbeat timeout.
    assert status == EXIT_WORKER_LOST, log[-3000:]
    assert seconds < HEARTBEAT_TIMEOUT + EXIT_ALLOWANCE, f"{seconds:.1f} s"
    assert "Traceback" not in log, log[-3000:]
    checkpoint_dir = tmp_path / "ckpt"
    last = _checkpoint_steps(checkpoint_dir)[-1]
    assert last < TOTAL_STEPS
    assert _last_line(log) == (
        f"bit-pretrain: lost worker 1 (127.0.0.1:{ports[1]}); the last checkpoint is step "
        f"{last} ({checkpoint_dir}/ckpt-{last}). Start the same commands again on all workers "
        "to resume from it."
    )

    # The same commands again (new ports: the old ones may linger) resume from that step.
    workers = _start_workers(
        tmp_path, tmp_path / "train.tfrecord", checkpoint_dir, _free_ports(2), "second"
    )
    try:
        for process, log_path in workers:
            process.wait(timeout=200)
            assert process.returncode == 0, log_path.read_text()[-3000:]
    finally:
        _kill_all(workers)
    summary = json.loads((checkpoint_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == last
    assert summary["step"] == TOTAL_STEPS
    assert [entry["step"] for entry in summary["history"]] == list(range(last + 1, TOTAL_STEPS + 1))


@pytest.mark.slow
def test_a_frozen_chief_is_named_by_the_survivor_within_the_heartbeat_timeout(tmp_path):
    seconds, status, log, ports = _lose_a_worker(tmp_path, victim=0, how=signal.SIGSTOP)

    # A frozen chief keeps its connections open: only its missing heartbeats give it away.
    assert status == EXIT_WORKER_LOST, log[-3000:]
    assert seconds < HEARTBEAT_TIMEOUT + EXIT_ALLOWANCE, f"{seconds:.1f} s"
    assert "Traceback" not in log, log[-3000:]
    last = _checkpoint_steps(tmp_path / "ckpt")[-1]
    assert _last_line(log).startswith(
        f"bit-pretrain: lost worker 0 (127.0.0.1:{ports[0]}); the last checkpoint is step {last} "
    ), log[-3000:]


# What TensorFlow 2.21 said in the two cases above, and when a worker was frozen, verbatim.
CLUSTER = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
CRASHED_PEER = (
    "Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error "
    "information from remote target /job:worker/replica:0/task:1 while calling "
    "/tensorflow.WorkerService/RecvBuf:\n:UNKNOWN:Error received from peer\n"
    "The error could be from a previous operation. Restart your program to reset."
)
SILENT_SERVICE = (
    "Collective ops is aborted by: Deadline Exceeded\n"
    "RPC: /tensorflow.CoordinationService/Heartbeat\n"
    "The error could be from a previous operation. Restart your program to reset."
)
UNHEALTHY_PEER = (
    "Collective ops is aborted by: Error reported from /job:worker/task:0: The following tasks "
    "are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have "
    "crashed."
)


@pytest.mark.parametrize(
    ("message", "own_index", "lost"),
    [
        (CRASHED_PEER, 0, ("worker", 1)),
        (SILENT_SERVICE, 1, ("worker", 0)),
        (UNHEALTHY_PEER, 0, ("worker", 1)),
    ],
)
def test_the_lost_task_is_read_from_tensorflows_message(monkeypatch, message, own_index, lost):
    from bit_tf.pretrain.workers import is_peer_failure, lost_task

    tf_config = {"cluster": CLUSTER, "task": {"type": "worker", "index": own_index}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    import tensorflow as tf

    assert is_peer_failure(tf.errors.UnavailableError(None, None, message))
    assert lost_task(message, CLUSTER) == lost


def test_a_failing_step_is_no_lost_worker():
    import tensorflow as tf

    from bit_tf.pretrain.workers import is_peer_failure

    error = tf.errors.InvalidArgumentError(None, None, "logits and labels must be broadcastable")
    assert not is_peer_failure(error)
    assert not is_peer_failure(ValueError("Collective ops is aborted by: nothing"))
