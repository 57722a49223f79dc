"""Upstream pre-training of BiT backbones under tf.distribute, with preemption-safe checkpoints.

The recipe of BiT-S/M/L: SGD with momentum 0.9, weight decay 1e-4, global batch 4096, the
`bit_tf.pretrain.schedule` learning rate (0.03 x batch / 256, 5000 warm-up steps, 10x decays),
224x224 Inception crops and flips, softmax cross-entropy for single-label data and sigmoid
cross-entropy for multi-label data (with the head bias starting at -10, as big_vision's BiT
ImageNet-21k config), optionally bfloat16 mixed precision.

The loop is a custom `strategy.run` loop over `distribute_datasets_from_function` (one shard per
worker, the global batch split over all replicas, steps counted globally by
`optimizer.iterations`), `steps_per_loop` steps per `tf.function` call (`bit_tf.pretrain.loop`).
Checkpoints (`tf.train.CheckpointManager`: model, optimizer and its step) are written every
`checkpoint_every` steps, at the end, and when the process gets SIGTERM or SIGINT; a run started
again with the same arguments continues from the latest checkpoint, and its input continues
where it stopped (the input stream is a function of the step, see `bit_tf.pretrain.data`).
Progress goes to the log and to TensorBoard (`bit_tf.pretrain.progress`); a lost worker ends
the others with `bit_tf.pretrain.workers.WorkerLost`, which says how to resume.

Example:
    >>> from bit_tf.pretrain.recipe import PretrainConfig, pretrain
    >>> result = pretrain(PretrainConfig(model="BiT-S-R50x1", dataset="imagenet2012",
    ...                                  data_dir="/data/tfds", checkpoint_dir="/ckpt/bit-s",
    ...                                  strategy="mirrored"))
    >>> result.step, result.weights_path
    (28080, '/ckpt/bit-s/BiT-S-R50x1.npz')
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading

import keras
import tensorflow as tf

from bit_tf.models.create import create_model
from bit_tf.models.registry import parse_model_name
from bit_tf.models.weights import save_official_weights
from bit_tf.pretrain.data import (
    DEFAULT_IMAGE_SIZE,
    NOTHING_DECODED,
    DataError,
    Source,
    UpstreamInput,
    open_source,
)
from bit_tf.pretrain.loop import make_train_loop, make_train_step, top1_hits, upstream_loss
from bit_tf.pretrain.progress import ProgressLog
from bit_tf.pretrain.run_folder import claim_folder, run_settings
from bit_tf.pretrain.schedule import (
    DEFAULT_GLOBAL_BATCH_SIZE,
    WARMUP_STEPS,
    UpstreamSchedule,
    upstream_schedule,
)
from bit_tf.pretrain.workers import WorkerLost, configure_heartbeat_timeout, worker_lost_error
from bit_tf.training.atomic import write_text
from bit_tf.training.interruption import TrainingInterruptedError
from bit_tf.training.optimizers import FusedMomentumSGD
from bit_tf.training.run_lock import holding
from bit_tf.training.signals import StopSignals

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "StrategyError",
    "TrainingInterrupted",
    "TrainingInterruptedError",
    "WorkerLost",
    "configure_cpu_devices",
    "default_steps_per_loop",
    "initialise_head_bias",
    "make_optimizer",
    "make_strategy",
    "make_train_loop",
    "make_train_step",
    "pretrain",
    "stop_signals",
    "top1_hits",
    "upstream_loss",
]

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
#: The initial head bias of multi-label (sigmoid) training, as big_vision's BiT ImageNet-21k
#: config sets it (`init_head_bias = -10`): every class starts near probability 0, so the
#: thousands of absent labels of an image do not dominate the first steps' loss.
MULTI_LABEL_HEAD_BIAS = -10.0
#: Seconds to wait for a remote TPU before giving up with a clear error.
TPU_CONNECT_TIMEOUT = 30
#: Steps per `tf.function` call on GPUs and TPUs, where the host must not make them wait.
ACCELERATOR_STEPS_PER_LOOP = 100


class StrategyError(RuntimeError):
    """The requested distribution strategy cannot be set up on this machine."""


#: Pre-training's name for `TrainingInterruptedError` (the same class), kept for callers who
#: catch it.
TrainingInterrupted = TrainingInterruptedError


@dataclasses.dataclass
class PretrainConfig:
    """Everything one upstream run needs; the fields are the `bit-pretrain` flags.

    A `checkpoint_dir` holding a run with other settings is refused (`RunSettingsError`, see
    `bit_tf.pretrain.run_folder`); `overwrite` deletes that run and starts again.

    Example:
        >>> config = PretrainConfig(model="BiT-S-R50x1", dataset="/data/train-*",
        ...                         checkpoint_dir="/ckpt", num_classes=1000)
    """

    model: str = "BiT-S-R50x1"
    dataset: str = "imagenet2012"
    checkpoint_dir: str = "bit_pretrain"
    data_dir: str | None = None
    split: str = "train"
    num_classes: int | None = None
    multi_label: bool = False
    label_offset: int = 0
    num_examples: int | None = None
    global_batch_size: int = DEFAULT_GLOBAL_BATCH_SIZE
    epochs: int | None = None
    train_steps: int | None = None
    warmup_steps: int = WARMUP_STEPS
    decay_epochs: str | tuple = "seed"
    base_learning_rate: float | None = None
    weight_decay: float = WEIGHT_DECAY
    image_size: int = DEFAULT_IMAGE_SIZE
    shuffle_buffer: int = 10_000
    units_per_block: tuple | None = None
    mixed_precision: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    steps_per_loop: int | None = None
    logdir: str | None = None
    seed: int = 0
    strategy: str = "default"
    tpu: str = "local"
    heartbeat_timeout: float | None = None
    overwrite: bool = False


@dataclasses.dataclass
class PretrainResult:
    """What a finished run returns.

    Attributes:
        model: the trained Keras model (with its head).
        step: the final global step.
        resumed_from_step: the step restored from a checkpoint at start (0 for a fresh run).
        weights_path: the official-layout `.npz` of the trained model (chief only, else None).
        is_chief: whether this process wrote the shared outputs.
        history: per log line, {"step", "loss", "metric", "learning_rate",
            "images_per_second", "seconds"}.
    """

    model: keras.Model
    step: int
    resumed_from_step: int
    weights_path: str | None
    is_chief: bool
    history: list


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` logical devices (call before TensorFlow runs anything).

    Lets `--strategy=mirrored` run over several "devices" on a machine without accelerators.

    Example:
        >>> configure_cpu_devices(2)
        >>> strategy = make_strategy("mirrored")   # 2 replicas on /cpu:0 and /cpu:1
    """
    if count < 1:
        raise ValueError(f"cpu_devices must be >= 1, got {count!r}.")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise StrategyError(
            f"Cannot split the CPU into {count} logical devices: TensorFlow is already "
            f"initialised ({error}). Call configure_cpu_devices before anything else runs."
        ) from None


def _connect_tpu(tpu: str) -> tf.distribute.Strategy:
    outcome = {}

    def connect():
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            outcome["strategy"] = tf.distribute.TPUStrategy(resolver)
        except Exception as error:  # noqa: BLE001 (reported below with the address)
            outcome["error"] = error

    thread = threading.Thread(target=connect, name="connect-tpu", daemon=True)
    thread.start()
    thread.join(TPU_CONNECT_TIMEOUT)
    advice = (
        "Pass --tpu=local on a Cloud TPU VM, --tpu=<name or grpc://address> for a remote TPU, "
        "or use --strategy=mirrored (GPUs/CPU) or --strategy=default."
    )
    if thread.is_alive():
        raise StrategyError(f"No answer from TPU {tpu!r} within {TPU_CONNECT_TIMEOUT} s. {advice}")
    if "error" in outcome:
        error = outcome["error"]
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise StrategyError(
            f"No TPU found for --tpu={tpu!r} ({type(error).__name__}: {first_line}). {advice}"
        )
    return outcome["strategy"]


def make_strategy(
    name: str, tpu: str = "local", heartbeat_timeout: float | None = None
) -> tf.distribute.Strategy:
    """Builds the tf.distribute strategy named by `--strategy`.

    - "default": one device (the first GPU, or the CPU);
    - "mirrored": `MirroredStrategy` over all GPUs of this host (or all logical CPU devices);
    - "multi_worker": `MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` variable;
      `heartbeat_timeout` (seconds; None: TensorFlow's 10 s) is how long a worker may be silent
      before the others stop (`bit_tf.pretrain.workers.configure_heartbeat_timeout`);
    - "tpu": `TPUStrategy` through a `TPUClusterResolver` (`tpu`: "local", a name or address).

    Raises:
        StrategyError: unknown name, or no TPU reachable (within `TPU_CONNECT_TIMEOUT` s).

    Example:
        >>> strategy = make_strategy("mirrored")
        >>> strategy.num_replicas_in_sync
        8
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in gpus] or [
            device.name for device in tf.config.list_logical_devices("CPU")
        ]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            log.warning("--strategy=multi_worker without TF_CONFIG: training on this host only.")
        try:
            if heartbeat_timeout is not None:
                configure_heartbeat_timeout(heartbeat_timeout)
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, tf.errors.OpError) as error:
            raise StrategyError(
                f"Cannot start MultiWorkerMirroredStrategy ({error}); check TF_CONFIG "
                f"({os.environ.get('TF_CONFIG')!r})."
            ) from None
    if name == "tpu":
        return _connect_tpu(tpu)
    raise StrategyError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def _worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task_id): the chief writes the shared checkpoint and outputs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    jobs = resolver.cluster_spec().as_dict()
    if "chief" in jobs:
        return task_type == "chief", task_id
    return task_type in (None, "worker") and task_id == 0, task_id


def make_optimizer(learning_rate, momentum: float = MOMENTUM) -> keras.optimizers.SGD:
    """SGD with momentum (BiT: 0.9); weight decay is added to the gradients by the train step.

    A `bit_tf.training.optimizers.FusedMomentumSGD`: Keras' SGD with one fused update op per
    variable.

    Create it inside `strategy.scope()`.

    Example:
        >>> with strategy.scope():
        ...     optimizer = make_optimizer(upstream_schedule("S", 1_281_167))
    """
    return FusedMomentumSGD(learning_rate=learning_rate, momentum=momentum)


def stop_signals() -> StopSignals:
    """The stop-signal recorder of a pre-training run: the first SIGTERM/SIGINT stops the run
    at the end of its loop, with a checkpoint; later ones are reported and change nothing.

    Example:
        >>> with stop_signals() as signals:
        ...     loop.run(...)   # checks signals.received between loops
    """
    return StopSignals(
        first="Got {signal}: stopping at the end of this loop, with a checkpoint.",
        again=(
            "{signal} received again: the run stops once its checkpoint is complete "
            "(SIGKILL stops at once and loses the steps since the last checkpoint)."
        ),
        logger=log,
    )


def default_steps_per_loop() -> int:
    """`ACCELERATOR_STEPS_PER_LOOP` where GPUs or TPUs train, else 1.

    Many steps per call keep accelerators busy; on CPUs the host never waits for a device,
    and a step takes long enough that a long loop would only delay logs and stops.

    Example:
        >>> default_steps_per_loop()   # on a GPU host
        100
    """
    accelerators = tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")
    return ACCELERATOR_STEPS_PER_LOOP if accelerators else 1


def _checkpoint_managers(checkpoint, checkpoint_dir, is_chief, task_id, keep):
    """The chief writes to `checkpoint_dir`; other workers write a throw-away copy (all
    workers must take part in saving under MultiWorkerMirroredStrategy)."""
    if is_chief:
        directory = checkpoint_dir
    else:
        directory = os.path.join(checkpoint_dir, f".worker-{task_id}")
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)


def _save(manager, step, is_chief):
    path = manager.save(checkpoint_number=step)
    if not is_chief:
        tf.io.gfile.rmtree(manager.directory)
        return None
    log.info("Saved checkpoint %s", path)
    return path


def _fields(config: PretrainConfig, *names: str) -> dict:
    """The named fields of `config`, as the keyword arguments of the same names."""
    return {name: getattr(config, name) for name in names}


def _resolve_schedule(config: PretrainConfig, source) -> tuple:
    prefix, _, _ = parse_model_name(config.model)
    dataset_size = config.num_examples or source.num_examples()
    schedule = upstream_schedule(
        prefix,
        dataset_size,
        config.global_batch_size,
        **_fields(config, "epochs", "train_steps", "warmup_steps", "decay_epochs"),
    )
    if config.base_learning_rate is not None:
        schedule.base_learning_rate = float(config.base_learning_rate)
    return schedule, dataset_size


def initialise_head_bias(model: keras.Model, value: float) -> keras.Model:
    """Sets every bias of the model's head (the layer named "head") to `value`.

    `pretrain` starts multi-label runs at `MULTI_LABEL_HEAD_BIAS` (-10), as big_vision does for
    the sigmoid loss; a resumed run then restores the trained bias from its checkpoint.

    Example:
        >>> model = create_model("BiT-M-R50x1")
        >>> float(initialise_head_bias(model, -10.0).get_layer("head").bias[0])
        -10.0
    """
    bias = model.get_layer("head").bias
    bias.assign(keras.ops.full(bias.shape, value, dtype=bias.dtype))
    return model


def _check_batch(strategy, global_batch_size):
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size {global_batch_size} does not split over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )


def _build_model(config: PretrainConfig, strategy, num_classes, schedule):
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        with strategy.scope():
            model_options = {}
            if config.units_per_block:
                model_options["units_per_block"] = tuple(config.units_per_block)
            model = create_model(
                config.model,
                **({} if num_classes is None else {"num_classes": num_classes}),
                input_shape=(config.image_size, config.image_size, 3),
                **model_options,
            )
            if config.multi_label:
                initialise_head_bias(model, MULTI_LABEL_HEAD_BIAS)
            optimizer = make_optimizer(schedule)
            optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model, optimizer


def pretrain(
    config: PretrainConfig, strategy: tf.distribute.Strategy | None = None
) -> PretrainResult:
    """Runs (or resumes) one upstream pre-training run; see the module docstring.

    Args:
        config: the run's settings.
        strategy: a strategy to use instead of `make_strategy(config.strategy, config.tpu,
            config.heartbeat_timeout)`.

    Returns:
        A `PretrainResult`; the chief also writes `<checkpoint_dir>/<model>.npz` (official
        layout) and `<checkpoint_dir>/summary.json`, and TensorBoard scalars to
        `<logdir>/train` when `config.logdir` is given.

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT arrived; a checkpoint was written first (a
            signal that comes while the last files are written lets them finish first).
        WorkerLost: another worker of a multi-worker run is gone (crashed, or silent for the
            heartbeat timeout); its message says which and from which step a restart resumes.
        StrategyError, DataError, ValueError: bad settings, with what to change.
        RunLockedError: another run (another process) holds `checkpoint_dir` (the chief's).

    Example:
        >>> result = pretrain(PretrainConfig(model="BiT-S-R50x1", dataset="/data/train-*",
        ...                                  checkpoint_dir="/ckpt", train_steps=1000))
    """
    if config.steps_per_loop is not None and config.steps_per_loop < 1:
        raise ValueError(f"steps_per_loop must be >= 1, got {config.steps_per_loop!r}.")
    # From here on SIGTERM and SIGINT stop the run at a loop's end, with a checkpoint.
    with stop_signals() as signals:
        return _pretrain(config, strategy, signals)


def _pretrain(config: PretrainConfig, strategy, signals: StopSignals) -> PretrainResult:
    if strategy is None:
        strategy = make_strategy(config.strategy, config.tpu, config.heartbeat_timeout)
    _check_batch(strategy, config.global_batch_size)
    is_chief, task_id = _worker_role(strategy)
    # One run per checkpoint folder: the chief holds it (the other workers write throw-away
    # copies under it, and would find it held by their own chief).
    folder = config.checkpoint_dir if is_chief else None
    with holding(folder, program="bit_tf.pretrain", flag="checkpoint_dir"):
        return _train(config, strategy, signals, is_chief, task_id)


@dataclasses.dataclass
class _Plan:
    """What a run reads and how long it trains."""

    source: Source
    num_classes: int | None
    schedule: UpstreamSchedule
    dataset_size: int
    steps_per_loop: int


@dataclasses.dataclass
class _Run:
    """A pre-training run once built: what its steps need."""

    config: PretrainConfig
    strategy: tf.distribute.Strategy
    plan: _Plan
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    manager: tf.train.CheckpointManager
    is_chief: bool
    signals: StopSignals
    progress: ProgressLog


def _train(config: PretrainConfig, strategy, signals: StopSignals, is_chief, task_id):
    """`_pretrain` once the chief holds the checkpoint folder."""
    plan = _plan(config, strategy)
    if is_chief:
        settings = run_settings(config, plan.schedule, plan.dataset_size)
        claim_folder(config.checkpoint_dir, settings, config.overwrite)
    model, optimizer = _build_model(config, strategy, plan.num_classes, plan.schedule)
    manager, latest = _restored(model, optimizer, config, is_chief, task_id)
    step = int(optimizer.iterations.numpy())
    progress = ProgressLog(
        plan.schedule.total_steps,
        step,
        config.global_batch_size,
        config.log_every,
        plan.schedule,
        multi_label=config.multi_label,
        logdir=config.logdir if is_chief else None,
    )
    run = _Run(config, strategy, plan, model, optimizer, manager, is_chief, signals, progress)
    try:
        end = _train_to_end(run, step, saved_step=step if latest else None)
    finally:
        progress.close()
    weights_path = None
    if is_chief:
        weights_path = save_official_weights(
            model, os.path.join(config.checkpoint_dir, f"{config.model}.npz")
        )
        _write_summary(config, end, step, progress.history, weights_path)
    if signals.received is not None:
        # The run is complete and its files are whole; the signal still ends the program.
        raise TrainingInterruptedError(signals.received, end, manager.latest_checkpoint)
    return PretrainResult(model, end, step, weights_path, is_chief, progress.history)


def _plan(config: PretrainConfig, strategy) -> _Plan:
    """The run's source, classes, schedule and loop length, logged in one line."""
    source = open_source(config.dataset, config.data_dir, config.split)
    num_classes = config.num_classes
    if num_classes is None:
        num_classes = len(source.class_names) if source.kind == "folder" else None
    schedule, dataset_size = _resolve_schedule(config, source)
    steps_per_loop = config.steps_per_loop or default_steps_per_loop()
    log.info(
        "%s on %s (%d examples): %d steps, batch %d over %d replicas, %d steps per loop, "
        "boundaries %s",
        config.model,
        config.dataset,
        dataset_size,
        schedule.total_steps,
        config.global_batch_size,
        strategy.num_replicas_in_sync,
        steps_per_loop,
        schedule.boundaries,
    )
    return _Plan(source, num_classes, schedule, dataset_size, steps_per_loop)


def _restored(model, optimizer, config: PretrainConfig, is_chief: bool, task_id: int):
    """(checkpoint manager, the checkpoint restored or None): the latest checkpoint of
    `checkpoint_dir` restored into the model and optimizer."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    latest = tf.train.latest_checkpoint(config.checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("Restored %s", latest)
    manager = _checkpoint_managers(
        checkpoint, config.checkpoint_dir, is_chief, task_id, config.keep_checkpoints
    )
    return manager, latest


def _train_to_end(run: _Run, step: int, saved_step: int | None) -> int:
    """Trains from `step` to the last step (or a stop signal) and saves the final checkpoint;
    returns the step reached. A lost worker is raised as `WorkerLost`."""
    config = run.config
    try:
        if step < run.plan.schedule.total_steps:
            upstream = UpstreamInput(
                run.plan.source,
                run.model.output_shape[-1],
                config.global_batch_size,
                **_fields(
                    config, "image_size", "multi_label", "seed", "shuffle_buffer", "label_offset"
                ),
            )
            distributed = run.strategy.distribute_datasets_from_function(upstream.dataset_fn(step))
            train_loop = make_train_loop(
                run.strategy,
                run.model,
                run.optimizer,
                global_batch_size=config.global_batch_size,
                multi_label=config.multi_label,
                weight_decay=config.weight_decay,
            )
            loop = _HostLoop(
                config,
                run.plan.steps_per_loop,
                run.manager,
                run.is_chief,
                run.signals,
                run.progress,
            )
            total = run.plan.schedule.total_steps
            saved_step = loop.run(train_loop, iter(distributed), step, total, saved_step)
            step = int(run.optimizer.iterations.numpy())
        if saved_step != step:
            _save(run.manager, step, run.is_chief)
    except tf.errors.OpError as error:
        lost = worker_lost_error(error, run.strategy, config.checkpoint_dir)
        if lost is None:
            raise
        raise lost from error
    return step


def _data_error(error: tf.errors.InvalidArgumentError) -> DataError | None:
    """The DataError of the input pipeline's "nothing decoded" assertion, else None."""
    if NOTHING_DECODED not in str(error.message):
        return None
    # The message of the pipeline's assertion, without TensorFlow's frame around it.
    line = next(line for line in error.message.splitlines() if NOTHING_DECODED in line)
    return DataError(line[line.index(NOTHING_DECODED) :].split("]")[0].strip())


class _HostLoop:
    """Calls the train loop until the last step: `steps_per_loop` steps per call, a call
    ending early at a checkpoint step and at the last step; logs, checkpoints and stops on
    signals between calls."""

    def __init__(self, config, steps_per_loop, manager, is_chief, signals, progress):
        self.config = config
        self.steps_per_loop = steps_per_loop
        self.manager = manager
        self.is_chief = is_chief
        self.signals = signals
        self.progress = progress

    def loop_length(self, step: int, total_steps: int) -> int:
        every = self.config.checkpoint_every
        next_checkpoint = (step // every + 1) * every
        return min(self.steps_per_loop, next_checkpoint - step, total_steps - step)

    def run(self, train_loop, iterator, step, total_steps, saved_step):
        while step < total_steps:
            stop = tf.constant(0 if self.signals.received is None else 1, tf.int32)
            length = tf.constant(self.loop_length(step, total_steps), tf.int32)
            try:
                sums = train_loop(iterator, stop, length)
                ran = int(sums["steps"])
            except tf.errors.InvalidArgumentError as error:
                data_error = _data_error(error)
                if data_error is None:
                    raise
                raise data_error from error
            step += ran
            self.progress.add(sums)
            self.progress.log_if_due(step)
            if float(sums["stop"]) > 0:
                if saved_step == step:  # the signal came while this step's checkpoint was written
                    path = self.manager.latest_checkpoint if self.is_chief else None
                else:
                    path = _save(self.manager, step, self.is_chief)
                raise TrainingInterruptedError(self.signals.received or signal.SIGTERM, step, path)
            if step % self.config.checkpoint_every == 0:
                _save(self.manager, step, self.is_chief)
                saved_step = step
        return saved_step


def _write_summary(config, step, resumed_from, history, weights_path):
    """Writes `<checkpoint_dir>/summary.json`: the run's history is that of the earlier
    sessions up to `resumed_from` (from the summary they wrote) and this session's, so that a
    resumed or finished run started again keeps its whole curve."""
    path = os.path.join(config.checkpoint_dir, "summary.json")
    summary = {
        "model": config.model,
        "step": step,
        "resumed_from_step": resumed_from,
        "steps_this_run": step - resumed_from,
        "weights": weights_path,
        "history": _earlier_history(path, resumed_from) + list(history),
    }
    write_text(path, json.dumps(summary, indent=1))


def _earlier_history(path: str, resumed_from: int) -> list[dict]:
    """The entries up to step `resumed_from` of the summary at `path` (none if it is missing
    or cannot be read: the summary is a report, the checkpoints are the run)."""
    if not resumed_from:
        return []
    try:
        with open(path, encoding="utf-8") as file:
            entries = json.load(file).get("history", [])
        return [entry for entry in entries if entry["step"] <= resumed_from]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return []
