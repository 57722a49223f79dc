"""A worker lost in multi-worker pre-training, said plainly: which one, and how to go on.

Under `MultiWorkerMirroredStrategy`, TensorFlow's coordination service watches the workers:
every worker sends heartbeats to the service on the coordination leader (the `chief` task, or
`worker` 0), and a collective op whose peer is gone fails. A worker killed outright is noticed
by its peers within seconds (their connections break); a host that hangs with its connections
open (frozen, or cut off from the network) is noticed once its heartbeats have been missing
for the heartbeat timeout, 10 s unless `configure_heartbeat_timeout` sets another.

TensorFlow reports either as a collective-op error ("Collective ops is aborted by: ...").
`worker_lost_error` turns such an error into `WorkerLost`, whose message names the lost task
and its address, the step of the last checkpoint, and that starting the same commands again
resumes.

Example:
    >>> configure_heartbeat_timeout(5.0)   # before the strategy is made
    >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
    >>> try:
    ...     outputs = train_step(iterator)
    ... except tf.errors.OpError as error:
    ...     lost = worker_lost_error(error, strategy, "/ckpt")
    ...     if lost is None:
    ...         raise
    ...     raise lost from error
"""

from __future__ import annotations

import json
import logging
import os
import re

import tensorflow as tf

log = logging.getLogger(__name__)

#: The coordination service's heartbeat timeout when none is configured (TensorFlow's default).
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
#: The jobs whose tasks the coordination service watches (as MultiWorkerMirroredStrategy sets).
COORDINATED_JOBS = ("chief", "worker")

#: Words of TensorFlow's errors that mean a peer task is gone, not that the step itself failed.
_PEER_FAILURE_WORDS = (
    "Collective ops is aborted",
    "CoordinationService",
    "coordination service",
    "heartbeat",
    "Connection reset",
    "Connection refused",
    "Socket closed",
    "failed to connect",
    "Failed to connect",
    "Broken pipe",
    "has failed, got preempted, or crashed",
)
_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


class WorkerLost(RuntimeError):  # noqa: N818 (a state of the cluster, read as "worker lost")
    """Another worker of a multi-worker run is gone; this one stopped too.

    Attributes:
        task: the lost task as "worker 1" or "chief 0" (None where the error does not say).
        address: its address from the cluster spec, e.g. "10.0.0.2:2222" (or None).
        step: the step of the latest checkpoint in the checkpoint folder (None: none yet).
        checkpoint: that checkpoint's path (or None).

    Example:
        >>> str(WorkerLost("worker 1", "10.0.0.2:2222", 400, "/ckpt/ckpt-400"))
        'lost worker 1 (10.0.0.2:2222); the last checkpoint is step 400 (/ckpt/ckpt-400). Start
        the same commands again on all workers to resume from it.'
    """

    def __init__(
        self,
        task: str | None,
        address: str | None,
        step: int | None,
        checkpoint: str | None,
        detail: str = "",
    ):
        self.task, self.address, self.step, self.checkpoint = task, address, step, checkpoint
        if task is None:
            who = "lost a worker"
        else:
            who = f"lost {task}" + (f" ({address})" if address else "")
        if detail:
            who += f" [{detail}]"
        if step is None:
            where = "no checkpoint was written yet. Start the same commands again on all "
            where += "workers to start over."
        else:
            where = (
                f"the last checkpoint is step {step} ({checkpoint}). Start the same commands "
                "again on all workers to resume from it."
            )
        super().__init__(f"{who}; {where}")


def _cluster_from_tf_config() -> tf.train.ClusterSpec | None:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    return spec if spec.as_dict() else None


def coordination_leader(cluster: dict) -> str:
    """The task hosting the coordination service: chief 0 if there is a chief, else worker 0.

    Example:
        >>> coordination_leader({"worker": ["a:1", "b:2"]})
        '/job:worker/replica:0/task:0'
    """
    job = "chief" if "chief" in cluster else "worker"
    return f"/job:{job}/replica:0/task:0"


def configure_heartbeat_timeout(seconds: float) -> bool:
    """Sets how long the coordination service waits for a worker's heartbeats before it
    declares the worker lost (a hung host; a killed one is noticed at once).

    Call it before `tf.distribute.MultiWorkerMirroredStrategy()` is made, with `TF_CONFIG` set;
    without a cluster in `TF_CONFIG` it does nothing. TensorFlow has no public setting for
    this: the function uses TensorFlow's own `configure_coordination_service` (the call
    MultiWorkerMirroredStrategy makes itself), and logs a warning and keeps TensorFlow's
    default where a TensorFlow release lacks it.

    Returns:
        Whether the timeout was set.

    Example:
        >>> configure_heartbeat_timeout(5.0)
        True
        >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
    """
    if seconds <= 0:
        raise ValueError(f"The heartbeat timeout must be positive, got {seconds!r} s.")
    cluster = _cluster_from_tf_config()
    if cluster is None:
        return False
    jobs = cluster.as_dict()
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context
    except ImportError as error:
        log.warning("Cannot set the heartbeat timeout (%s); TensorFlow's default holds.", error)
        return False
    coordinated = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
        for job in COORDINATED_JOBS
        if job in jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=coordination_leader(jobs),
        heartbeat_timeout_in_ms=int(seconds * 1000),
        coordinated_jobs=coordinated,
    )
    return True


def _task_address(cluster: dict, job: str, index: int) -> str | None:
    addresses = cluster.get(job)
    if isinstance(addresses, dict):  # a sparse cluster spec: {index: address}
        return addresses.get(index)
    if addresses and 0 <= index < len(addresses):
        return addresses[index]
    return None


def _own_task() -> tuple[str | None, int | None]:
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    index = task.get("index")
    return task.get("type"), None if index is None else int(index)


def lost_task(message: str, cluster: dict) -> tuple[str, int] | None:
    """The task an error message of a collective op blames: (job, index), or None.

    A task named in the message other than this process's own (from `TF_CONFIG`) is the lost
    one; a message about the coordination service itself (heartbeats that got no answer)
    blames the coordination leader.

    Example:
        >>> lost_task("... from remote target /job:worker/replica:0/task:1 ...",
        ...           {"worker": ["a:1", "b:2"]})
        ('worker', 1)
    """
    own = _own_task()
    for job, index in _TASK_NAME.findall(message):
        if (job, int(index)) != own and job in cluster:
            return job, int(index)
    if "CoordinationService" in message or "coordination service" in message:
        leader = _TASK_NAME.search(coordination_leader(cluster))
        job, index = leader.group(1), int(leader.group(2))
        if (job, index) != own:
            return job, index
    return None


def is_peer_failure(error: BaseException) -> bool:
    """Whether a TensorFlow error says that another task is gone (not a fault of the step).

    Example:
        >>> is_peer_failure(tf.errors.UnavailableError(None, None, "Socket closed"))
        True
    """
    if not isinstance(error, tf.errors.OpError):
        return False
    message = str(error.message)
    return any(word in message for word in _PEER_FAILURE_WORDS)


def latest_checkpoint_step(checkpoint_dir: str) -> tuple[int | None, str | None]:
    """(step, path) of the latest checkpoint `tf.train.CheckpointManager` wrote, else (None, None).

    Example:
        >>> latest_checkpoint_step("/ckpt")
        (400, '/ckpt/ckpt-400')
    """
    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        return None, None
    number = re.search(r"-(\d+)$", path)
    return (int(number.group(1)) if number else None), path


def worker_lost_error(
    error: BaseException, strategy: tf.distribute.Strategy, checkpoint_dir: str
) -> WorkerLost | None:
    """The `WorkerLost` that `error` means, or None when it is no peer failure (or the run has
    a single worker).

    Example:
        >>> worker_lost_error(error, strategy, "/ckpt")
        WorkerLost('lost worker 1 (127.0.0.1:2223); the last checkpoint is step 40 ...')
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    tasks = sum(len(cluster.get(job, ())) for job in COORDINATED_JOBS)
    if tasks < 2 or not is_peer_failure(error):
        return None
    step, path = latest_checkpoint_step(checkpoint_dir)
    found = lost_task(str(error.message), cluster)
    if found is None:
        first_line = str(error.message).strip().splitlines()[0][:160]
        return WorkerLost(None, None, step, path, detail=first_line)
    job, index = found
    return WorkerLost(f"{job} {index}", _task_address(cluster, job, index), step, path)
