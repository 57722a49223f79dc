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
import logging
from typing import Any

import keras
import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.data.eval_crops import EVAL_RESIZES, eval_short_side
from bit_tf.data.resolve import resolve
from bit_tf.finetune import hyperrule
from bit_tf.finetune.hyperrule_choice import (
    HYPERRULES,
    rule_batch_size,
    rule_boundaries,
    rule_resolution,
    rule_schedule,
)
from bit_tf.models.create import create_model
from bit_tf.training.accumulation import accumulation_and_micro_batch, strategy_for
from bit_tf.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    PROGRESS_FILE,
    TrainingDivergedError,
    TrainingInterruptedError,
)
from bit_tf.training.config import TrainingConfig, merged_config
from bit_tf.training.inputs import (
    Inputs,
    check_same_task,
    class_names_of,
    dataset_identity,
    given_train_stream,
    validation_batches,
)
from bit_tf.training.models import copied, dtype_policy_for, model_policy, with_new_head
from bit_tf.training.optimizers import FusedMomentumSGD
from bit_tf.training.run import TrainingRun
from bit_tf.training.run_lock import holding
from bit_tf.training.run_settings import RunSettingsError
from bit_tf.training.segments import VALIDATIONS_PER_RUN, validation_interval

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

#: The schedule (warm-up end, decays, end) of a tf.data train input of unknown size.
_UNSIZED_SCHEDULE = [100, 150, 300, 450, 500]


@dataclasses.dataclass
class FinetuneConfig(TrainingConfig):
    """The settings of one `finetune` run; each field is also a keyword of `finetune`.

    The fields every recipe shares are `bit_tf.training.config.TrainingConfig`'s; fine-tuning
    adds `weights`, `mixup_alpha`, `resize` and `random_crop`.

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
        hyperrule: "lecture" (the default: 448/384 crops for larger images, decays at 30/60/90%
            of the run, `base_lr` scaled by `batch_size / 512`) or "authors" (the authors'
            released code: 512/480 crops, decays after steps 200/300/400 of 500 and their
            equivalents, `base_lr` at any batch; `bit_tf.finetune.hyperrule_choice`).
        eval_resize: how validation images are brought to the crop: "resize" (the default,
            straight, as the authors' BiT code) or "short_side_crop" (the shorter side to the
            resize size, then the central crop, as big_vision evaluates; `bit_tf.data.eval_crops`).
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
    mixup_alpha: float | None = None
    resize: int | None = None
    random_crop: bool = True
    hyperrule: str = "lecture"
    eval_resize: str = "resize"


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
    train = resolve(train, "train")
    validation = resolve(validation, "validation", like=train)
    if train is None:
        raise ValueError("train is required.")
    policy = dtype_policy_for(model_or_name, config.dtype)
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
    strategy = strategy_for(micro_batch, config.strategy)
    inputs = _input_pipelines(train, validation, images, config, micro_batch)
    schedule = _run_schedule(inputs.dataset_size, config)
    dtype = (policy or model_policy(model_or_name)).name
    settings = _run_settings(model_name, train, inputs, schedule, accumulation, dtype, config)
    run = TrainingRun(
        config, settings, schedule.total_steps, schedule.validation_every, accumulation
    )

    def build() -> keras.Model:
        backbone = _backbone(model_or_name, config, policy)
        model = with_new_head(backbone, inputs.num_classes, class_names_of(train))
        _compile(model, config, schedule.boundaries, accumulation)
        return model

    model = run.resume_or_build(strategy, build)
    return model, run.fit(model, inputs)


def _run_settings(
    model_name: str,
    train,
    inputs: Inputs,
    schedule: _Schedule,
    accumulation: int,
    dtype: str,
    config: FinetuneConfig,
) -> dict:
    """What identifies a fine-tuning run (recorded in its progress.json)."""
    return {
        "model": model_name,
        "weights": config.weights,
        "dataset": dataset_identity(train),
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
        "dtype": dtype,
        "hyperrule": config.hyperrule,
        "eval_resize": config.eval_resize,
    }


def _merged_config(config: FinetuneConfig | None, overrides: dict) -> FinetuneConfig:
    """`config` (or the defaults) with the keyword `overrides` in place of its fields."""
    config = merged_config(FinetuneConfig, config, overrides, caller="finetune")
    for name, choices in (("hyperrule", HYPERRULES), ("eval_resize", EVAL_RESIZES)):
        if getattr(config, name) not in choices:
            raise ValueError(
                f"{name} must be one of {', '.join(choices)}; got {getattr(config, name)!r}."
            )
    return config


def _model_policy_or_none(model_or_name) -> keras.DTypePolicy | None:
    return None if isinstance(model_or_name, str) else model_policy(model_or_name)


@dataclasses.dataclass(frozen=True)
class _ImageSettings:
    """The resize, crop and MixUp of an ImageSource train input."""

    resize: int
    crop: int
    mixup_alpha: float


def _input_pipelines(
    train, validation, images: _ImageSettings | None, config: FinetuneConfig, micro_batch: int
) -> Inputs:
    """The pipelines of micro-batches: the HyperRule's for an ImageSource, else as given."""
    if not isinstance(train, data_lib.ImageSource):
        train_stream, num_classes, dataset_size = given_train_stream(train, config)
        batches = _validation(validation, micro_batch, config.crop, None, config)
        return Inputs(train_stream, batches, num_classes, dataset_size, None, config.mixup_alpha)
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

    return Inputs(
        train_stream,
        _validation(validation, micro_batch, images.crop, images.resize, config),
        train.num_classes,
        train.num_examples,
        (images.resize, images.crop),
        images.mixup_alpha,
    )


def _validation(validation, micro_batch: int, crop, resize, config: FinetuneConfig):
    """The validation batches, resized as `config.eval_resize` says."""
    short_side = None
    if config.eval_resize == "short_side_crop" and crop is not None:
        short_side = resize or eval_short_side(crop)  # the resize size, or the 8/7 rule
    return validation_batches(validation, micro_batch, crop, short_side=short_side)


def _image_settings(
    train, validation, model_name: str, config: FinetuneConfig
) -> _ImageSettings | None:
    """The resize, crop and MixUp alpha of an ImageSource train input (None for a tf.data
    one), whose classes `validation` (unless a tf.data.Dataset) must share."""
    if not isinstance(train, data_lib.ImageSource):
        return None
    check_same_task(train, validation)
    resize, crop = resolve_resolution(
        train, model_name, config.resize, config.crop, config.hyperrule
    )
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
    rule = rule_schedule(config.hyperrule, dataset_size) if dataset_size else _UNSIZED_SCHEDULE
    total_steps = int(config.steps) if config.steps is not None else rule[-1]
    warmup_steps = config.warmup_steps
    if warmup_steps is None:
        warmup_steps = round(total_steps * rule[0] / rule[-1])
    boundaries = rule_boundaries(config.hyperrule, dataset_size, total_steps, int(warmup_steps))
    validation_every = validation_interval(total_steps, config.validation_every)
    return _Schedule(total_steps, boundaries, validation_every)


def _backbone(
    model_or_name: str | keras.Model, config: FinetuneConfig, policy: keras.DTypePolicy | None
) -> keras.Model:
    """The model to put a new head on: built from a name, or the model given (cloned into
    the config's strategy, if one was given)."""
    if isinstance(model_or_name, str):
        return create_model(model_or_name, num_classes=None, weights=config.weights, dtype=policy)
    if config.weights is not None:
        raise ValueError("weights= is for model names; load weights into the model.")
    return model_or_name if config.strategy is None else copied(model_or_name)


def _compile(
    model: keras.Model, config: FinetuneConfig, boundaries: list, accumulation: int
) -> None:
    """Compiles SGD with momentum 0.9 on the HyperRule schedule, softmax cross-entropy and
    accuracy."""
    schedule = hyperrule.HyperRuleSchedule(
        batch_size=rule_batch_size(config.hyperrule, config.batch_size),
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


def resolve_resolution(
    train: data_lib.ImageSource,
    model_name: str,
    resize: int | None,
    crop: int | None,
    rule: str = "lecture",
) -> tuple[int, int]:
    """The (resize, crop) `finetune` uses: given values, else the HyperRule's (`rule`: "lecture"
    or "authors") for the images.

    Example:
        >>> resolve_resolution(source_of_32x32_images, "BiT-M-R50x1", None, None)
        (160, 128)
    """
    default_resize, default_crop = rule_resolution(rule, train.image_size, model_name)
    resize = resize or (default_resize if crop is None else max(crop, default_resize))
    return resize, crop or min(default_crop, resize)
