"""Upstream pre-training of BiT backbones under tf.distribute, with preemption-safe checkpoints.

The recipe of BiT-S/M/L: SGD with momentum 0.9, weight decay 1e-4, global batch 4096, the
`bit_tf.pretrain_schedule` learning rate (0.03 x batch / 256, 5000 warm-up steps, 10x decays),
224x224 Inception crops and flips, softmax cross-entropy for single-label data and sigmoid
cross-entropy for multi-label data (with the head bias starting at -10, as big_vision's BiT
ImageNet-21k config), optionally bfloat16 mixed precision.

The loop is a custom `strategy.run` loop over `distribute_datasets_from_function` (one shard per
worker, the global batch split over all replicas, steps counted globally by
`optimizer.iterations`). Checkpoints (`tf.train.CheckpointManager`: model, optimizer and its step)
are written every `checkpoint_every` steps, at the end, and when the process gets SIGTERM or
SIGINT; a run started again with the same arguments continues from the latest checkpoint, and
its input continues where it stopped (the input stream is a function of the step, see
`bit_tf.pretrain_data`).

Example:
    >>> from bit_tf.pretrain import PretrainConfig, pretrain
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
import time

import keras
import tensorflow as tf

from bit_tf.interruption import StoppedBySignal
from bit_tf.models import create_model, parse_model_name
from bit_tf.optimizers import FusedMomentumSGD
from bit_tf.pretrain_data import (
    DEFAULT_IMAGE_SIZE,
    NOTHING_DECODED,
    DataError,
    UpstreamInput,
    open_source,
)
from bit_tf.pretrain_schedule import DEFAULT_GLOBAL_BATCH_SIZE, WARMUP_STEPS, upstream_schedule
from bit_tf.weights import save_official_weights

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


class StrategyError(RuntimeError):
    """The requested distribution strategy cannot be set up on this machine."""


class TrainingInterrupted(StoppedBySignal):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; run again to resume.

    Attributes:
        signal_number: the signal that stopped training (signal.SIGTERM or signal.SIGINT).
        step: the global step saved in the checkpoint.
        checkpoint_path: the checkpoint written (None on a worker that is not the chief).

    Example:
        >>> try:
        ...     pretrain(config)
        ... except TrainingInterrupted as stop:
        ...     print(stop.step, stop.checkpoint_path)
    """

    message = (
        "Training stopped by {signal} at step {step}; checkpoint {checkpoint}. "
        "Run the same command again to resume."
    )

    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint written (`checkpoint`, under the name pre-training has used)."""
        return self.checkpoint


@dataclasses.dataclass
class PretrainConfig:
    """Everything one upstream run needs; the fields are the `bit-pretrain` flags.

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
    seed: int = 0
    strategy: str = "default"
    tpu: str = "local"


@dataclasses.dataclass
class PretrainResult:
    """What a finished run returns.

    Attributes:
        model: the trained Keras model (with its head).
        step: the final global step.
        resumed_from_step: the step restored from a checkpoint at start (0 for a fresh run).
        weights_path: the official-layout `.npz` of the trained model (chief only, else None).
        is_chief: whether this process wrote the shared outputs.
        history: per logging window, {"step", "loss", "metric", "learning_rate"}.
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


def make_strategy(name: str, tpu: str = "local") -> tf.distribute.Strategy:
    """Builds the tf.distribute strategy named by `--strategy`.

    - "default": one device (the first GPU, or the CPU);
    - "mirrored": `MirroredStrategy` over all GPUs of this host (or all logical CPU devices);
    - "multi_worker": `MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` variable;
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


def upstream_loss(labels: tf.Tensor, logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Per-example loss: softmax cross-entropy on class ids, or sigmoid cross-entropy summed
    over classes on multi-hot labels.

    Example:
        >>> upstream_loss(tf.constant([[0., 1.]]), tf.constant([[0., 0.]]), True)
        <tf.Tensor: shape=(1,), dtype=float32, numpy=array([1.3862944], dtype=float32)>
    """
    logits = tf.cast(logits, tf.float32)
    if multi_label:
        per_class = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=logits
        )
        return tf.reduce_sum(per_class, axis=-1)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


def top1_hits(labels: tf.Tensor, logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Per-example 1.0 where the top-scoring class is right: top-1 accuracy for class ids,
    precision@1 for multi-hot labels (the top class is one of the image's labels).

    Example:
        >>> top1_hits(tf.constant([[0., 1., 1.]]), tf.constant([[0., 5., 1.]]), True)
        <tf.Tensor: shape=(1,), dtype=float32, numpy=array([1.], dtype=float32)>
    """
    top = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
    if multi_label:
        return tf.gather(tf.cast(labels, tf.float32), top, axis=-1, batch_dims=1)
    return tf.cast(tf.equal(top, tf.cast(labels, tf.int32)), tf.float32)


def make_optimizer(learning_rate, momentum: float = MOMENTUM) -> keras.optimizers.SGD:
    """SGD with momentum (BiT: 0.9); weight decay is added to the gradients by the train step.

    A `bit_tf.optimizers.FusedMomentumSGD`: Keras' SGD with one fused update op per variable.

    Create it inside `strategy.scope()`.

    Example:
        >>> with strategy.scope():
        ...     optimizer = make_optimizer(upstream_schedule("S", 1_281_167))
    """
    return FusedMomentumSGD(learning_rate=learning_rate, momentum=momentum)


def make_train_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    global_batch_size: int,
    multi_label: bool = False,
    weight_decay: float = WEIGHT_DECAY,
):
    """One distributed SGD step: `train_step(iterator, stop) -> dict of global sums`.

    Each replica computes its loss as sum / `global_batch_size` (so the optimizer's all-reduce
    sum is the global mean), adds L2 weight decay on convolution and dense kernels
    (`weight_decay * kernel`, spread over the replicas) and applies the Keras optimizer.
    `stop` (an int32 scalar, 1 when this process was asked to stop) is summed over all
    replicas of all workers, so every worker learns about a signal in the same step.

    Returns:
        A `tf.function` returning {"loss": global mean loss, "hits": top-1 hits (sum),
        "examples": count, "stop": number of replicas asked to stop}.

    Example:
        >>> step = make_train_step(strategy, model, optimizer, global_batch_size=4096)
        >>> outputs = step(iterator, tf.constant(0))
    """
    num_replicas = strategy.num_replicas_in_sync
    decayed = {id(variable) for variable in model.trainable_variables if _is_kernel(variable)}

    def replica_step(images, labels, stop):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = upstream_loss(labels, logits, multi_label)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        if weight_decay:
            gradients = [
                gradient + (weight_decay / num_replicas) * tf.cast(variable.value, gradient.dtype)
                if id(variable) in decayed
                else gradient
                for gradient, variable in zip(gradients, variables, strict=True)
            ]
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        hits = tf.reduce_sum(top1_hits(labels, logits, multi_label))
        examples = tf.cast(tf.shape(per_example)[0], tf.float32)
        context = tf.distribute.get_replica_context()
        # tf.identity gives each replica its own copy (an input tensor shared by the replicas
        # has no device of its own to reduce to).
        stop_count = context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.identity(stop), tf.float32)
        )
        return {"loss": loss, "hits": hits, "examples": examples, "stop": stop_count}

    @tf.function
    def train_step(iterator, stop):
        images, labels = next(iterator)
        outputs = strategy.run(replica_step, args=(images, labels, stop))
        return {
            "loss": strategy.reduce("SUM", outputs["loss"], axis=None),
            "hits": strategy.reduce("SUM", outputs["hits"], axis=None),
            "examples": strategy.reduce("SUM", outputs["examples"], axis=None),
            "stop": strategy.experimental_local_results(outputs["stop"])[0],
        }

    return train_step


def _is_kernel(variable) -> bool:
    return variable.path.endswith("kernel")


class _StopSignals:
    """Records SIGTERM/SIGINT instead of dying, so the loop can checkpoint and stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        if self.received is None:
            log.warning(
                "Got %s: stopping after this step, with a checkpoint.",
                signal.Signals(number).name,
            )
        self.received = number

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


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


def pretrain(
    config: PretrainConfig, strategy: tf.distribute.Strategy | None = None
) -> PretrainResult:
    """Runs (or resumes) one upstream pre-training run; see the module docstring.

    Args:
        config: the run's settings.
        strategy: a strategy to use instead of `make_strategy(config.strategy, config.tpu)`.

    Returns:
        A `PretrainResult`; the chief also writes `<checkpoint_dir>/<model>.npz` (official
        layout) and `<checkpoint_dir>/summary.json`.

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT arrived; a checkpoint was written first.
        StrategyError, DataError, ValueError: bad settings, with what to change.

    Example:
        >>> result = pretrain(PretrainConfig(model="BiT-S-R50x1", dataset="/data/train-*",
        ...                                  checkpoint_dir="/ckpt", train_steps=1000))
    """
    if strategy is None:
        strategy = make_strategy(config.strategy, config.tpu)
    _check_batch(strategy, config.global_batch_size)
    is_chief, task_id = _worker_role(strategy)
    prefix, _, _ = parse_model_name(config.model)
    source = open_source(config.dataset, config.data_dir, config.split)
    num_classes = config.num_classes
    if num_classes is None:
        num_classes = len(source.class_names) if source.kind == "folder" else None
    schedule, dataset_size = _resolve_schedule(config, source)
    total_steps = schedule.total_steps
    log.info(
        "%s on %s (%d examples): %d steps, batch %d over %d replicas, boundaries %s",
        config.model,
        config.dataset,
        dataset_size,
        total_steps,
        config.global_batch_size,
        strategy.num_replicas_in_sync,
        schedule.boundaries,
    )

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
    num_classes = model.output_shape[-1]

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    latest = tf.train.latest_checkpoint(config.checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("Restored %s", latest)
    manager = _checkpoint_managers(
        checkpoint, config.checkpoint_dir, is_chief, task_id, config.keep_checkpoints
    )
    step = int(optimizer.iterations.numpy())
    resumed_from = step
    saved_step = step if latest else None

    upstream = UpstreamInput(
        source,
        num_classes,
        config.global_batch_size,
        **_fields(config, "image_size", "multi_label", "seed", "shuffle_buffer", "label_offset"),
    )
    history = []
    if step < total_steps:
        distributed = strategy.distribute_datasets_from_function(upstream.dataset_fn(step))
        iterator = iter(distributed)
        train_step = make_train_step(
            strategy,
            model,
            optimizer,
            global_batch_size=config.global_batch_size,
            multi_label=config.multi_label,
            weight_decay=config.weight_decay,
        )
        history, saved_step = _train_loop(
            config, train_step, iterator, schedule, manager, step, is_chief, saved_step
        )
        step = int(optimizer.iterations.numpy())
    if saved_step != step:
        _save(manager, step, is_chief)

    weights_path = None
    if is_chief:
        weights_path = save_official_weights(
            model, os.path.join(config.checkpoint_dir, f"{config.model}.npz")
        )
        _write_summary(config, step, resumed_from, history, weights_path)
    return PretrainResult(model, step, resumed_from, weights_path, is_chief, history)


def _train_loop(config, train_step, iterator, schedule, manager, step, is_chief, saved_step):
    total_steps = schedule.total_steps
    history, window = [], {"loss": 0.0, "hits": 0.0, "examples": 0.0, "steps": 0}
    started = time.monotonic()
    with _StopSignals() as signals:
        while step < total_steps:
            stop = tf.constant(0 if signals.received is None else 1, tf.int32)
            try:
                outputs = train_step(iterator, stop)
            except tf.errors.InvalidArgumentError as error:
                if NOTHING_DECODED not in str(error.message):
                    raise
                # The message of the pipeline's assertion, without TensorFlow's frame around it.
                line = next(line for line in error.message.splitlines() if NOTHING_DECODED in line)
                text = line[line.index(NOTHING_DECODED) :].split("]")[0].strip()
                raise DataError(text) from error
            step += 1
            for key in ("loss", "hits", "examples"):
                window[key] += float(outputs[key])
            window["steps"] += 1
            if step % config.log_every == 0 or step == total_steps:
                entry = {
                    "step": step,
                    "loss": window["loss"] / window["steps"],
                    "metric": window["hits"] / max(window["examples"], 1.0),
                    "learning_rate": float(schedule(step - 1)),
                    "seconds": round(time.monotonic() - started, 3),
                }
                history.append(entry)
                log.info(
                    "step %d/%d loss %.4f %s %.4f lr %.5f",
                    step,
                    total_steps,
                    entry["loss"],
                    "precision@1" if config.multi_label else "top-1",
                    entry["metric"],
                    entry["learning_rate"],
                )
                window = {"loss": 0.0, "hits": 0.0, "examples": 0.0, "steps": 0}
            if float(outputs["stop"]) > 0:
                path = _save(manager, step, is_chief)
                raise TrainingInterrupted(signals.received or signal.SIGTERM, step, path)
            if step % config.checkpoint_every == 0:
                _save(manager, step, is_chief)
                saved_step = step
    return history, saved_step


def _write_summary(config, step, resumed_from, history, weights_path):
    summary = {
        "model": config.model,
        "step": step,
        "resumed_from_step": resumed_from,
        "steps_this_run": step - resumed_from,
        "weights": weights_path,
        "history": history,
    }
    path = os.path.join(config.checkpoint_dir, "summary.json")
    temporary = path + ".partial"
    with open(temporary, "w") as stream:
        json.dump(summary, stream, indent=1)
    os.replace(temporary, path)
