"""Fine-tuning a BiT model with `model.fit` under the BiT-HyperRule, resumable and fail-safe.

`finetune` replaces the head by a zero-initialised one for the task's classes, compiles SGD with
momentum 0.9 and the HyperRule schedule (`bit_tf.finetune.hyperrule`), and calls `model.fit` for the
HyperRule's number of steps, validating every `validation_every` steps. With a
`checkpoint_dir` it keeps `last.keras` (model and optimizer, written atomically at every
validation and when SIGTERM or SIGINT arrives) and `best.keras` (best validation accuracy);
running the same call again after an interruption resumes from `last.keras` and ends at the
same step count as an uninterrupted run. A NaN or infinite loss stops training with
`TrainingDivergedError` and leaves the last good checkpoint untouched (the checkpoints, the NaN
guard and the signal handling are `bit_tf.training.checkpoints`).

Its settings are the fields of `FinetuneConfig`, given as keywords, as a config, or both.

Example:
    >>> import bit_tf
    >>> from bit_tf import data
    >>> train, validation = data.split(data.from_folder("flowers/"), 0.2)
    >>> model, history = bit_tf.finetune(
    ...     "BiT-M-R50x1", train, validation, weights="BiT-M-R50x1", batch_size=128,
    ...     checkpoint_dir="runs/flowers", logdir="runs/flowers/logs")
    >>> history.history["val_accuracy"][-1]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.finetune import hyperrule
from bit_tf.models.bit_model import BitModel
from bit_tf.models.create import create_model
from bit_tf.models.resnet_v2 import resolve_dtype_policy
from bit_tf.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    PROGRESS_FILE,
    Checkpointer,
    RunProgress,
    TrainingDivergedError,
    TrainingInterruptedError,
    find_resumable,
    load_resumable,
    read_progress,
    signals_caught,
)
from bit_tf.training.micro_batch import Architecture, plan_accumulation
from bit_tf.training.optimizers import FusedMomentumSGD
from bit_tf.training.run_lock import holding
from bit_tf.training.run_settings import RunSettingsError

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "PROGRESS_FILE",
    "VALIDATIONS_PER_RUN",
    "FinetuneConfig",
    "RunSettingsError",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "accumulation_and_micro_batch",
    "finetune",
    "resolve_resolution",
]

log = logging.getLogger(__name__)

#: How many validations a run makes by default.
VALIDATIONS_PER_RUN = 10
#: The schedule (warm-up end, decays, end) of a tf.data train input of unknown size.
_UNSIZED_SCHEDULE = [100, 150, 300, 450, 500]


@dataclasses.dataclass
class FinetuneConfig:
    """The settings of one `finetune` run; each field is also a keyword of `finetune`.

    Model:
        weights: for a model name: a released checkpoint name, a path or a URL; None for
            random weights.
        dtype: for a model name, the Keras dtype policy to build it with: "mixed_bfloat16"
            computes in bfloat16 with float32 weights; None for Keras' global policy. A model
            passed in keeps its own.

    Input:
        batch_size: the global batch per optimizer update; the learning rate is `base_lr`
            scaled by `batch_size / 512`.
        gradient_accumulation_steps: split each batch into this many micro-batches whose
            gradients are averaged before one update (same effective batch, less memory);
            "auto" splits it only where the batch would not fit the memory available, by the
            estimate of `bit_tf.training.micro_batch` (a bit_tf model or name: its architecture, the
            crop, the dtype), and says so in the log; a resumed run keeps its own. On a GPU
            or TPU, and for a tf.data train input (batched already), "auto" keeps whole
            batches.
        resize, crop: image sizes; None for the HyperRule's from the train images' size.
        mixup_alpha: None for the HyperRule's (0 below 20k examples, 0.1 above).
        dataset_size: training examples, only for a `tf.data.Dataset` train input.
        seed: makes the run repeatable: the input pipeline's order and augmentation (the order
            of every epoch, crops, flips, MixUp; a resumed run reads on from where it stopped),
            and the initial weights of a model name (`keras.utils.set_random_seed(seed)`, which
            also seeds Python's and NumPy's global generators). On CPUs the same call gives the
            same losses and weights; on GPUs this also needs
            `tf.config.experimental.enable_op_determinism()` (slower), and `jit_compile`
            there picks kernels by timing them, which can differ from run to run.
        cache: where the encoded images may be cached: "auto", "memory", "none" or a folder
            on a local disk (`bit_tf.data.encoded_cache`); decoded images never are.
        random_flip, random_crop: the training augmentation of an ImageSource input; turn one
            off where it changes the label (as VTAB does per task, `bit_tf.evaluation.vtab.Task`).

    Schedule:
        steps: optimizer updates; None for the HyperRule's (500, 10k or 20k by dataset size).
        base_lr: the learning rate at batch 512 (HyperRule: 0.003).
        warmup_steps: linear warm-up; None for the HyperRule's, scaled to `steps`.
        validation_every: optimizer steps between validations (one Keras epoch each); None
            for 10 validations per run.

    Run:
        strategy: a `tf.distribute` strategy (e.g. MirroredStrategy); the model is built (or
            cloned) in its scope, and `batch_size` is global.
        checkpoint_dir: where `last.keras`, `best.keras` and `progress.json` go; a run with
            the same settings found there is resumed (a finished one trains no further), one
            with other settings is refused (`RunSettingsError`). The run holds the folder while
            it runs (`bit_tf.training.run_lock`): another process's run there is refused
            (`RunLockedError`). None: no checkpoints, no signal handling.
        overwrite: start again in a `checkpoint_dir` that holds a run with other settings,
            deleting its checkpoints.
        logdir: a TensorBoard log folder; None for none.
        callbacks: more Keras callbacks for `model.fit`.
        jit_compile: passed to `model.compile` ("auto": XLA where supported).
        verbose: passed to `model.fit` (the Keras progress bar by default).

    Example:
        >>> config = FinetuneConfig(weights="BiT-M-R50x1", batch_size=128,
        ...                         checkpoint_dir="runs/pets")
        >>> model, history = bit_tf.finetune("BiT-M-R50x1", train, validation, config)
        >>> model, history = bit_tf.finetune("BiT-M-R50x1", train, config=config, steps=100)
    """

    weights: str | None = None
    batch_size: int = 512
    steps: int | None = None
    base_lr: float = hyperrule.BASE_LR
    mixup_alpha: float | None = None
    gradient_accumulation_steps: int | str = "auto"
    strategy: tf.distribute.Strategy | None = None
    callbacks: Sequence[keras.callbacks.Callback] | None = None
    resize: int | None = None
    crop: int | None = None
    warmup_steps: int | None = None
    validation_every: int | None = None
    dataset_size: int | None = None
    checkpoint_dir: str | None = None
    logdir: str | None = None
    seed: int | None = None
    dtype: str | keras.DTypePolicy | None = None
    jit_compile: bool | str = "auto"
    verbose: int | str = "auto"
    overwrite: bool = False
    random_flip: bool = True
    random_crop: bool = True
    cache: bool | str = "auto"


_FIELDS = tuple(field.name for field in dataclasses.fields(FinetuneConfig))


def finetune(
    model_or_name: str | keras.Model,
    train: Any,
    validation: Any = None,
    config: FinetuneConfig | None = None,
    **overrides: Any,
) -> tuple[keras.Model, keras.callbacks.History]:
    """Fine-tunes a BiT model on a classification task with the BiT-HyperRule.

    Args:
        model_or_name: a model name such as "BiT-M-R50x1", or a Keras model from bit_tf (its
            head, if any, is replaced) or any model ending in a feature vector.
        train: a `bit_tf.data.ImageSource`, an (images, labels) pair, a class-folder path, a
            TFDS name, or a batched `tf.data.Dataset` of (images in [0, 1], one-hot labels)
            (then `dataset_size` or `steps` is needed).
        validation: the same kinds (None: no validation).
        config: the run's settings (see `FinetuneConfig`); None for the defaults.
        **overrides: `FinetuneConfig` fields, replacing those of `config` (weights=,
            batch_size=, steps=, checkpoint_dir=, ...).

    Returns:
        (model, history): the fine-tuned `keras.Model` and the `History` of all fit calls. The
        model keeps the class names of an ImageSource train input in `model.class_names`.

    Raises:
        TypeError: a keyword that is not a `FinetuneConfig` field, or an input of another kind.
        ValueError: settings that do not fit together, with what to change; train and
            validation with different class names.
        RunSettingsError: `checkpoint_dir` holds a run with other settings (model, dataset,
            steps, ...), and `overwrite` is not set.
        TrainingDivergedError: the loss became NaN or infinite.
        TrainingInterruptedError: SIGTERM or SIGINT arrived (with a checkpoint_dir); the
            checkpoint is written, run the same call again to resume.
        RunLockedError: another run (another process) is writing into `checkpoint_dir`.
        DamagedRunFileError: the `progress.json` of `checkpoint_dir` cannot be read, or
            neither of its checkpoints can (one that can is resumed from, with a warning).
        FileWriteError: a checkpoint could not be written (a full, read-only or forbidden
            disk); the checkpoint before it is left whole.

    Example:
        >>> model, history = bit_tf.finetune(
        ...     "BiT-M-R50x1", train, validation, weights="BiT-M-R50x1", batch_size=128,
        ...     gradient_accumulation_steps=4, checkpoint_dir="runs/pets")
    """
    config = _merged_config(config, overrides)
    # One run per checkpoint folder, from before anything there is read until the run ends.
    with holding(config.checkpoint_dir, program="bit_tf.finetune", flag="checkpoint_dir"):
        return _finetune(model_or_name, train, validation, config)


def _finetune(
    model_or_name: str | keras.Model, train: Any, validation: Any, config: FinetuneConfig
) -> tuple[keras.Model, keras.callbacks.History]:
    """`finetune` once its checkpoint folder is held."""
    train = _as_source(train, "train")
    validation = _as_source(validation, "validation")
    if train is None:
        raise ValueError("train is required.")
    policy = _dtype_policy(model_or_name, config.dtype)
    model_name = model_or_name if isinstance(model_or_name, str) else model_or_name.name
    images = _image_settings(train, validation, model_name, config)
    # A tf.data train input comes in batches of its own: "auto" keeps them whole.
    accumulation, micro_batch = accumulation_and_micro_batch(
        config,
        model_or_name,
        images.crop if images else None,
        (policy or _model_policy_or_none(model_or_name)),
        config.strategy or tf.distribute.get_strategy(),
    )
    strategy = _strategy_for(micro_batch, config.strategy)
    inputs = _input_pipelines(train, validation, images, config, micro_batch)
    schedule = _run_schedule(inputs.dataset_size, config)
    settings = {
        "model": model_name,
        "weights": config.weights,
        "dataset": _dataset_identity(train),
        "num_classes": inputs.num_classes,
        "batch_size": config.batch_size,
        "total_steps": schedule.total_steps,
        "boundaries": schedule.boundaries,
        "base_lr": config.base_lr,
        "gradient_accumulation_steps": accumulation,
        "resolution": inputs.resolution,
        "mixup_alpha": inputs.mixup_alpha,
        "augmentation": {"random_flip": config.random_flip, "random_crop": config.random_crop},
        "seed": config.seed,
        "dtype": (policy or _model_policy(model_or_name)).name,
    }
    progress, resumed = _progress_or_resumable(config.checkpoint_dir, settings, config.overwrite)
    with strategy.scope():
        if resumed:
            model, progress = load_resumable(resumed, progress, accumulation)
        else:
            if config.seed is not None:  # the same initial weights for a model name
                keras.utils.set_random_seed(config.seed)
            backbone = _backbone(model_or_name, config, policy)
            model = _with_new_head(backbone, inputs.num_classes, _class_names(train))
            _compile(model, config, schedule.boundaries, accumulation)
    run = RunProgress(
        config.checkpoint_dir, progress, schedule.total_steps, accumulation, config.base_lr
    )
    callbacks = _all_callbacks(Checkpointer(run), config.callbacks, config.logdir)
    return model, _fit_segments(model, inputs, run, schedule.validation_every, callbacks, config)


def _merged_config(config: FinetuneConfig | None, overrides: dict) -> FinetuneConfig:
    """`config` (or the defaults) with the keyword `overrides` in place of its fields."""
    if config is None:
        config = FinetuneConfig()
    elif not isinstance(config, FinetuneConfig):
        raise TypeError(
            f"config must be a bit_tf.finetune.FinetuneConfig, got {type(config).__name__}."
        )
    for name in overrides:
        if name not in _FIELDS:
            raise TypeError(
                f"finetune() got an unexpected keyword argument {name!r}; its settings are "
                f"the fields of FinetuneConfig: {', '.join(_FIELDS)}."
            )
    return dataclasses.replace(config, **overrides)


def accumulation_and_micro_batch(
    config,
    model_or_name: str | keras.Model | None = None,
    resolution: int | None = None,
    policy: keras.DTypePolicy | None = None,
    strategy: tf.distribute.Strategy | None = None,
    available_bytes: int | None = None,
) -> tuple[int, int]:
    """(micro-batches per update, the micro-batch) of a run's config (`FinetuneConfig` or
    `bit_tf.distill.DistillConfig`), checked against the batch size.

    "auto" plans them with `bit_tf.training.micro_batch.plan_accumulation` for the model's
    architecture (1 for a model of another kind, or without a known `resolution`), the
    `resolution`, the dtype `policy` and the `strategy`'s replicas, and logs a split in one
    line; a run recorded in the config's `checkpoint_dir` with the same batch size keeps the
    number it was started with. `available_bytes`: the memory to plan against (None: what is
    available now).

    Raises:
        ValueError: a number that is not a positive divisor of the batch size.

    Example:
        >>> accumulation_and_micro_batch(FinetuneConfig(batch_size=64), "BiT-S-R26x1", 128)
        (1, 64)
    """
    batch_size = config.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    accumulation = config.gradient_accumulation_steps
    if accumulation is None or accumulation == "auto":
        accumulation = _recorded_accumulation(config) or _planned_accumulation(
            batch_size, model_or_name, resolution, policy, strategy, available_bytes
        )
    if isinstance(accumulation, bool) or not isinstance(accumulation, int | float):
        raise ValueError(
            f"gradient_accumulation_steps must be 'auto' or a positive divisor of batch_size="
            f"{batch_size}, got {config.gradient_accumulation_steps!r}."
        )
    accumulation = int(accumulation)
    if accumulation < 1 or batch_size % accumulation:
        raise ValueError(
            f"gradient_accumulation_steps={config.gradient_accumulation_steps!r} must be a "
            f"positive divisor of batch_size={batch_size}."
        )
    return accumulation, batch_size // accumulation


def _recorded_accumulation(config) -> int | None:
    """The accumulation of the run recorded in `config.checkpoint_dir` with the same batch
    size, so that a resumed run is the run it was (None: no such run)."""
    if not config.checkpoint_dir or config.overwrite:
        return None
    try:
        progress = read_progress(config.checkpoint_dir)
        recorded = progress["settings"]
        if recorded["batch_size"] == config.batch_size:
            return int(recorded["gradient_accumulation_steps"])
    except Exception:  # no run there, or one the run's own checks will report
        return None
    return None


def _planned_accumulation(
    batch_size, model_or_name, resolution, policy, strategy, available_bytes
) -> int:
    """`bit_tf.training.micro_batch`'s plan for this run; 1 where it cannot estimate."""
    if not resolution or model_or_name is None:
        return 1
    try:
        if isinstance(model_or_name, str):
            architecture = Architecture.from_name(model_or_name)
        else:
            architecture = Architecture.from_model(model_or_name)
    except ValueError:
        architecture = None
    if architecture is None:
        return 1
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        log.info(
            "gradient_accumulation_steps='auto' plans against the host's memory, so it keeps "
            "whole batches on a GPU or TPU; give gradient_accumulation_steps there."
        )
        return 1
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    dtype = policy.compute_dtype if policy is not None else "float32"
    plan = plan_accumulation(architecture, batch_size, resolution, dtype, replicas, available_bytes)
    if plan.accumulation > 1:
        log.warning(plan.describe(batch_size, resolution))
    return plan.accumulation


def _model_policy_or_none(model_or_name) -> keras.DTypePolicy | None:
    return None if isinstance(model_or_name, str) else _model_policy(model_or_name)


def _dtype_policy(
    model_or_name: str | keras.Model, dtype: str | keras.DTypePolicy | None
) -> keras.DTypePolicy | None:
    """The policy to build a named model with; None for a model passed in."""
    if dtype is not None and not isinstance(model_or_name, str):
        raise ValueError(
            f"dtype={dtype!r} applies to a model name; build the model with "
            "bit_tf.create_model(..., dtype=...) instead."
        )
    return resolve_dtype_policy(dtype) if isinstance(model_or_name, str) else None


def _strategy_for(
    micro_batch: int, strategy: tf.distribute.Strategy | None
) -> tf.distribute.Strategy:
    """The strategy given, else the current one; its replicas must split the micro-batch."""
    strategy = strategy or tf.distribute.get_strategy()
    if micro_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"The micro-batch {micro_batch} (batch_size / gradient_accumulation_steps) must be "
            f"divisible by the {strategy.num_replicas_in_sync} replicas of the strategy."
        )
    return strategy


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """The train stream (endless, from a micro-batch number) and validation batches, and what
    the task is."""

    train_stream: Callable[[int], tf.data.Dataset]
    validation_batches: tf.data.Dataset | None
    num_classes: int
    dataset_size: int | None
    resolution: tuple[int, int] | None = None
    mixup_alpha: float | None = None


@dataclasses.dataclass(frozen=True)
class _ImageSettings:
    """The resize, crop and MixUp of an ImageSource train input."""

    resize: int
    crop: int
    mixup_alpha: float


def _input_pipelines(
    train, validation, images: _ImageSettings | None, config: FinetuneConfig, micro_batch: int
) -> _Inputs:
    """The pipelines of micro-batches: the HyperRule's for an ImageSource, else as given."""
    crop, resolution, mixup_alpha = config.crop, None, config.mixup_alpha
    if isinstance(train, data_lib.ImageSource):
        crop, mixup_alpha = images.crop, images.mixup_alpha
        resolution = (images.resize, images.crop)
        seed = data_lib.resolve_seed(config.seed)

        def train_stream(start_batch: int) -> tf.data.Dataset:
            return data_lib.train_pipeline(
                train,
                micro_batch,
                images.resize,
                images.crop,
                mixup_alpha=images.mixup_alpha,
                seed=seed,
                cache=config.cache,
                random_flip=config.random_flip,
                random_crop=config.random_crop,
                start_batch=start_batch,
            )

        num_classes, dataset_size = train.num_classes, train.num_examples
    else:
        if config.dataset_size is None and config.steps is None:
            raise ValueError(
                "A tf.data.Dataset train input needs dataset_size= (for the HyperRule) or steps=."
            )

        def train_stream(start_batch: int) -> tf.data.Dataset:
            return train.repeat()  # a dataset given as it is starts at its beginning

        num_classes, dataset_size = int(train.element_spec[1].shape[-1]), config.dataset_size
    validation_batches = validation
    if isinstance(validation, data_lib.ImageSource):
        if crop is None:
            raise ValueError("crop= is needed to evaluate an ImageSource next to a tf.data train.")
        validation_batches = data_lib.eval_pipeline(validation, micro_batch, crop)
    return _Inputs(
        train_stream, validation_batches, num_classes, dataset_size, resolution, mixup_alpha
    )


def _image_settings(
    train, validation, model_name: str, config: FinetuneConfig
) -> _ImageSettings | None:
    """The resize, crop and MixUp alpha of an ImageSource train input (None for a tf.data
    one), whose classes `validation` (unless a tf.data.Dataset) must share."""
    if not isinstance(train, data_lib.ImageSource):
        return None
    if validation is not None and not isinstance(validation, tf.data.Dataset):
        if validation.num_classes != train.num_classes:
            raise ValueError(
                f"train has {train.num_classes} classes but validation has "
                f"{validation.num_classes}; they must be the same classification task."
            )
        if validation.class_names != train.class_names:
            first = next(
                index
                for index, (a, b) in enumerate(
                    zip(train.class_names, validation.class_names, strict=False)
                )
                if a != b
            )
            raise ValueError(
                f"train ({train.name}) and validation ({validation.name}) name their classes "
                f"differently: class {first} is {train.class_names[first]!r} in train but "
                f"{validation.class_names[first]!r} in validation; they must be the same "
                "classification task, with the classes in the same order."
            )
    resize, crop = resolve_resolution(train, model_name, config.resize, config.crop)
    mixup_alpha = config.mixup_alpha
    if mixup_alpha is None:
        mixup_alpha = hyperrule.get_mixup(train.num_examples)
    log.info(
        "Fine-tuning on %s: %d examples, %d classes, resize %d, crop %d, MixUp %s.",
        train.name,
        train.num_examples,
        train.num_classes,
        resize,
        crop,
        mixup_alpha,
    )
    return _ImageSettings(resize, crop, mixup_alpha)


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """The run's length, learning-rate boundaries and steps between validations."""

    total_steps: int
    boundaries: list
    validation_every: int


def _run_schedule(dataset_size: int | None, config: FinetuneConfig) -> _Schedule:
    """The HyperRule's schedule for `dataset_size`, with the config's steps and warm-up."""
    rule = hyperrule.get_schedule(dataset_size) if dataset_size else _UNSIZED_SCHEDULE
    total_steps = int(config.steps) if config.steps is not None else rule[-1]
    warmup_steps = config.warmup_steps
    if warmup_steps is None:
        warmup_steps = round(total_steps * rule[0] / rule[-1])
    boundaries = hyperrule.schedule_from_total(total_steps, warmup_steps=int(warmup_steps))
    validation_every = int(
        config.validation_every or max(1, math.ceil(total_steps / VALIDATIONS_PER_RUN))
    )
    return _Schedule(total_steps, boundaries, validation_every)


def _progress_or_resumable(
    checkpoint_dir: str | None, settings: dict, overwrite: bool
) -> tuple[dict, str | None]:
    """(progress, None) for a new run, or (its progress, last.keras) for the run with the same
    settings in `checkpoint_dir` (finished or not)."""
    if checkpoint_dir is None:
        return {"settings": settings, "step": 0, "finished": False}, None
    found = find_resumable(checkpoint_dir, settings, overwrite)
    if found is None:
        return {"settings": settings, "step": 0, "finished": False}, None
    path, progress = found
    return progress, path


def _backbone(
    model_or_name: str | keras.Model, config: FinetuneConfig, policy: keras.DTypePolicy | None
) -> keras.Model:
    """The model to put a new head on: built from a name, or the model given (cloned into
    the config's strategy, if one was given)."""
    if isinstance(model_or_name, str):
        return create_model(model_or_name, num_classes=None, weights=config.weights, dtype=policy)
    if config.weights is not None:
        raise ValueError("weights= is for model names; load weights into the model.")
    if config.strategy is None:
        return model_or_name
    backbone = keras.models.clone_model(model_or_name)
    backbone.set_weights(model_or_name.get_weights())
    return backbone


def _compile(
    model: keras.Model, config: FinetuneConfig, boundaries: list, accumulation: int
) -> None:
    """Compiles SGD with momentum 0.9 on the HyperRule schedule, softmax cross-entropy and
    accuracy."""
    schedule = hyperrule.HyperRuleSchedule(
        batch_size=config.batch_size,
        base_lr=config.base_lr,
        boundaries=boundaries,
        gradient_accumulation_steps=accumulation,
    )
    optimizer = FusedMomentumSGD(
        learning_rate=schedule,
        momentum=0.9,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
    )


def _all_callbacks(
    checkpointer: Checkpointer,
    callbacks: Sequence[keras.callbacks.Callback] | None,
    logdir: str | None,
) -> list[keras.callbacks.Callback]:
    """The checkpointer first, then the caller's callbacks, then TensorBoard's for `logdir`."""
    all_callbacks = [checkpointer, *(callbacks or [])]
    if logdir:
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                f"logdir={logdir!r} asks for TensorBoard logs, but the tensorboard package is "
                "not installed: pip install tensorboard, or pass logdir=None."
            )
        all_callbacks.append(keras.callbacks.TensorBoard(logdir, update_freq="epoch"))
    return all_callbacks


def _fit_segments(
    model: keras.Model,
    inputs: _Inputs,
    run: RunProgress,
    validation_every: int,
    callbacks: list[keras.callbacks.Callback],
    config: FinetuneConfig,
) -> keras.callbacks.History:
    """Runs `model.fit` from the run's step to its end, one Keras epoch per validation, with
    signals caught where there are checkpoints; returns the History of all fit calls."""
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch, history.history = [], {}
    step = run.progress["step"]
    segments = _segments(step, run.total_steps, validation_every)
    with signals_caught(run, enabled=run.checkpoint_dir is not None):
        for first_epoch, epochs, length in segments:
            # Each segment reads on from the micro-batch where the run is (a resumed run too).
            segment = model.fit(
                inputs.train_stream(step * run.accumulation),
                validation_data=inputs.validation_batches,
                initial_epoch=first_epoch,
                epochs=first_epoch + epochs,
                steps_per_epoch=length * run.accumulation,
                callbacks=callbacks,
                verbose=config.verbose,
                shuffle=False,
            )
            step += epochs * length
            history.epoch.extend(segment.epoch)
            for key, values in segment.history.items():
                history.history.setdefault(key, []).extend(values)
    return history


def _model_policy(model: keras.Model) -> keras.DTypePolicy:
    """The dtype policy a model computes in: its stem convolution's, else its last layer's."""
    try:
        return model.get_layer("root_conv").dtype_policy
    except ValueError:
        return model.layers[-1].dtype_policy


def _dataset_identity(train) -> dict | None:
    """What names an ImageSource train input: where it comes from, its classes and size."""
    if not isinstance(train, data_lib.ImageSource):
        return None
    return {
        "name": train.name,
        "class_names": list(train.class_names),
        "examples": train.num_examples,
    }


def _class_names(train) -> tuple[str, ...] | None:
    """The class names of an ImageSource train input (folders, TFDS labels); None otherwise."""
    return train.class_names if isinstance(train, data_lib.ImageSource) else None


def _with_new_head(
    model: keras.Model, num_classes: int, class_names: Sequence[str] | None = None
) -> keras.Model:
    """`model` up to its pre-logits with a new zero head, as a BitModel that keeps the names."""
    try:
        features = model.get_layer("pre_logits").output
    except ValueError:
        features = model.outputs[0]
        if len(features.shape) != 2:
            raise ValueError(
                f"Model {model.name!r} has no 'pre_logits' layer and its output has shape "
                f"{features.shape}, not (batch, features); pass a bit_tf model or a feature "
                "extractor whose output is a vector per image."
            ) from None
    # Float32 logits for a mixed-precision backbone (its variable dtype), as Keras advises.
    head = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        name="head",
        dtype=_model_policy(model).variable_dtype,
    )(features)
    # A single input stays a single tensor (not a list), so `model(images)` matches its structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return BitModel(inputs, head, name=model.name, class_names=class_names)


def _as_source(value, name: str):
    if value is None or isinstance(value, data_lib.ImageSource | tf.data.Dataset):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        return data_lib.from_arrays(value[0], value[1], name=name)
    if isinstance(value, str | os.PathLike):
        if os.path.isdir(value):
            return data_lib.from_folder(value)
        return data_lib.from_tfds(str(value), split="train" if name == "train" else "test")
    raise TypeError(
        f"{name} must be a bit_tf.data.ImageSource, an (images, labels) pair, a folder path, "
        f"a TFDS name or a batched tf.data.Dataset, got {type(value).__name__}."
    )


def _segments(start: int, total: int, every: int) -> list[tuple[int, int, int]]:
    """Consecutive (first_epoch, epochs, steps_per_epoch) runs covering steps start..total."""
    epochs = []
    step = start
    while step < total:
        epoch = step // every
        end = min((epoch + 1) * every, total)
        epochs.append((epoch, end - step))
        step = end
    segments = []
    for epoch, length in epochs:
        if segments and segments[-1][2] == length and segments[-1][0] + segments[-1][1] == epoch:
            first, count, _ = segments[-1]
            segments[-1] = (first, count + 1, length)
        else:
            segments.append((epoch, 1, length))
    return segments


def resolve_resolution(
    train: data_lib.ImageSource, model_name: str, resize: int | None, crop: int | None
) -> tuple[int, int]:
    """The (resize, crop) `finetune` uses: given values, else the HyperRule's for the images.

    Example:
        >>> resolve_resolution(source_of_32x32_images, "BiT-M-R50x1", None, None)
        (160, 128)
    """
    default_resize, default_crop = hyperrule.get_resolution(train.image_size, model_name)
    resize = resize or (default_resize if crop is None else max(crop, default_resize))
    return resize, crop or min(default_crop, resize)
