"""Knowledge distillation of a big classifier into a small BiT with a patient, consistent teacher.

`distill(teacher, student, train, validation)` trains the student to match the teacher's
function, as Beyer et al. ("Knowledge distillation: A good teacher is patient and consistent",
2022) turned BiT-M-R152x2 into a BiT-R50x1 of 82.8% ImageNet top-1:

- consistent: in every step the teacher and the student see the same aggressively augmented
  images (an inception crop, a flip, MixUp with Beta(1, 1) applied once to the batch;
  `bit_tf.distill.data`), and the teacher's logits are computed then, in inference mode, not
  precomputed (`bit_tf.distill.model.Distiller`);
- function matching: the loss is the KL divergence between the teacher's and the student's
  softmax at a temperature (`bit_tf.distill.model.DistillationLoss`); labels are not used;
- patient: Adam with warm-up and cosine decay, gradients clipped at norm 1.0, kernel-only
  weight decay (`bit_tf.distill.optimizer`) over long schedules whose length follows the
  training set's size as the paper's fast/medium/long variants do (`bit_tf.distill.schedule`).

The run itself is `bit_tf.finetune`'s: with a `checkpoint_dir` it keeps `last.keras` and
`best.keras` (the student and the optimizer; the teacher is not saved, it never changes),
resumes an unfinished run, stops on a NaN loss with `TrainingDivergedError` and on SIGTERM or
SIGINT with `TrainingInterruptedError` after a checkpoint (`bit_tf.training.checkpoints`).

Example:
    >>> import bit_tf
    >>> from bit_tf import data
    >>> train, validation = data.split(data.from_folder("flowers/"), 0.2)
    >>> student, history = bit_tf.distill(
    ...     "runs/flowers/model.keras", "BiT-S-R50x1", train, validation,
    ...     patience="fast", batch_size=128, checkpoint_dir="runs/distill")
    >>> history.history["val_agreement"][-1]
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.distill.data import MIN_CROP_AREA, consistent_batches
from bit_tf.distill.model import DistillationLoss, Distiller
from bit_tf.distill.optimizer import distillation_optimizer
from bit_tf.distill.schedule import patient_steps, warmup_steps
from bit_tf.finetune.recipe import (
    VALIDATIONS_PER_RUN,
    TrainingDivergedError,
    TrainingInterruptedError,
    _all_callbacks,
    _as_source,
    _dataset_identity,
    _fit_segments,
    _Inputs,
    _strategy_for,
    _with_new_head,
    accumulation_and_micro_batch,
    resolve_resolution,
)
from bit_tf.models.create import create_model
from bit_tf.models.registry import find_release
from bit_tf.models.resnet_v2 import resolve_dtype_policy
from bit_tf.training.checkpoints import (
    Checkpointer,
    RunProgress,
    find_resumable,
    load_resumable,
)
from bit_tf.training.run_lock import holding

__all__ = [
    "DistillConfig",
    "DistillationLoss",
    "Distiller",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "distill",
    "load_teacher",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistillConfig:
    """The settings of one `distill` run; each field is also a keyword of `distill`.

    The defaults are the paper's recipe (big_vision `configs/proj/distill/`).

    Models:
        student_weights: for a student name: a released checkpoint name, a path or a URL to
            start from; None for random weights (as the paper's students).
        dtype: for a student name, the Keras dtype policy ("mixed_bfloat16", ...); None for
            Keras' global policy.
        temperature: T of the softmax both outputs are compared at (1 on ImageNet; the paper
            uses 1 to 10 on small data sets).

    Input:
        batch_size: the global batch per optimizer update (512; 4096 on ImageNet).
        gradient_accumulation_steps: micro-batches per update (same batch, less memory);
            "auto" splits the batch only where the student's step would not fit the memory
            available (`bit_tf.finetune.accumulation_and_micro_batch`).
        crop: the square size of the images; None for the HyperRule's for the train images
            (the resolution `bit_tf.finetune` trained a teacher at).
        mixup_alpha: MixUp's Beta(alpha, alpha) (1.0: the paper's `mixup p=1`); 0 for none.
        min_crop_area: the smallest inception crop, as a fraction of the image (0.05).
        random_flip: flip at random; turn it off where a flip changes the label.
        dataset_size: training examples, only for a `tf.data.Dataset` train input.
        seed: makes the run repeatable: the input pipeline's order and augmentation (a resumed
            run reads on from where it stopped), and the initial weights of a student name
            (`keras.utils.set_random_seed(seed)`, which also seeds Python's and NumPy's global
            generators); see `FinetuneConfig.seed` for GPUs.
        cache: where the encoded images may be cached ("auto", "memory", "none" or a folder on
            a local disk; `bit_tf.data.encoded_cache`); decoded images never are.

    Schedule:
        steps: optimizer updates; None for the `patience` schedule for the train set's size.
        patience: "fast", "medium" or "long": the paper's schedule lengths
            (`bit_tf.distill.schedule`); medium is 100k epochs for 1k images, 3k epochs for
            3k images, 1k epochs for 70k, 1,200 for ImageNet.
        base_lr: Adam's peak learning rate, after the warm-up.
        weight_decay: decoupled weight decay of the kernels at the peak (big_vision's `wd`).
        warmup_steps: linear warm-up; None for the paper's 1,500 (5,000 on ImageNet), at most a
            quarter of the run.
        clip_norm: the global gradient norm clipped to; None for no clipping.
        validation_every: optimizer steps between validations; None for 10 per run.

    Run:
        strategy: a `tf.distribute` strategy; the student (and a teacher given by path or
            name) is built in its scope, a teacher model given is cloned into it.
        checkpoint_dir: where `last.keras`, `best.keras` and `progress.json` go; a run with
            the same settings there is resumed (a finished one trains no further), one with
            other settings (teacher, student, dataset, steps, ...) is refused with
            `RunSettingsError`. The run holds the folder while it runs (`bit_tf.training.run_lock`).
            None: no checkpoints, no signals.
        overwrite: start again in a `checkpoint_dir` that holds a run with other settings,
            deleting its checkpoints.
        logdir: a TensorBoard log folder; None for none.
        callbacks: more Keras callbacks for `fit`.
        jit_compile: passed to `compile` ("auto": XLA where supported).
        verbose: passed to `fit`.

    Example:
        >>> config = DistillConfig(patience="fast", batch_size=128, checkpoint_dir="runs/pet")
        >>> student, history = bit_tf.distill(teacher, "BiT-S-R50x1", train, validation, config)
    """

    student_weights: str | None = None
    dtype: str | keras.DTypePolicy | None = None
    temperature: float = 1.0
    batch_size: int = 512
    gradient_accumulation_steps: int | str = "auto"
    crop: int | None = None
    mixup_alpha: float = 1.0
    min_crop_area: float = MIN_CROP_AREA
    random_flip: bool = True
    dataset_size: int | None = None
    seed: int | None = None
    cache: bool | str = "auto"
    steps: int | None = None
    patience: str = "medium"
    base_lr: float = 0.003
    weight_decay: float = 3e-4
    warmup_steps: int | None = None
    clip_norm: float | None = 1.0
    validation_every: int | None = None
    strategy: tf.distribute.Strategy | None = None
    checkpoint_dir: str | None = None
    logdir: str | None = None
    callbacks: Sequence[keras.callbacks.Callback] | None = None
    jit_compile: bool | str = "auto"
    verbose: int | str = "auto"
    overwrite: bool = False


_FIELDS = tuple(field.name for field in dataclasses.fields(DistillConfig))


def distill(
    teacher: str | keras.Model,
    student: str | keras.Model,
    train: Any,
    validation: Any = None,
    config: DistillConfig | None = None,
    **overrides: Any,
) -> tuple[keras.Model, keras.callbacks.History]:
    """Distils `teacher` into `student` by function matching on the train images.

    Args:
        teacher: any Keras model that outputs logits of the task's classes, a `.keras` file
            (e.g. the `model.keras` bit-finetune writes), or a released checkpoint name with a
            head ("BiT-M-R152x2-teacher-224", "BiT-M-R50x1-ILSVRC2012"). It runs in
            inference mode and is never updated (a model given is set non-trainable during
            the run and restored after it).
        student: a model name such as "BiT-S-R18x1" (a new zero head on `student_weights`, or
            random weights), or a Keras model: used as it is if it outputs one logit per class,
            else given a new zero head on its pre-logits.
        train: a `bit_tf.data.ImageSource`, an (images, labels) pair, a class-folder path, a
            TFDS name, or a batched `tf.data.Dataset` of (images in [0, 1], one-hot labels),
            already augmented (then `dataset_size` or `steps` is needed).
        validation: the same kinds (None: no validation).
        config: the run's settings (see `DistillConfig`); None for the defaults.
        **overrides: `DistillConfig` fields, replacing those of `config`.

    Returns:
        (student, history): the distilled student `keras.Model` and the `History` of the run,
        with the student's `accuracy`, the teacher's `teacher_accuracy` and their `agreement`
        (`val_` for validation), and the distillation `loss`.

    Raises:
        TypeError: a keyword that is not a `DistillConfig` field, or an input of another kind.
        ValueError: settings that do not fit together (a teacher of another number of classes,
            an unknown `patience`, ...), with what to change.
        TrainingDivergedError: the loss became NaN or infinite.
        TrainingInterruptedError: SIGTERM or SIGINT arrived (with a checkpoint_dir); the
            checkpoint is written, run the same call again to resume.
        RunLockedError: another run (another process) is writing into `checkpoint_dir`.
        DamagedRunFileError: the `progress.json` of `checkpoint_dir` cannot be read, or
            neither of its checkpoints can (one that can is resumed from, with a warning).

    Example:
        >>> student, history = bit_tf.distill(
        ...     "bit_finetune/model.keras", "BiT-S-R18x1", train, validation, steps=2_000,
        ...     batch_size=64, checkpoint_dir="runs/distill")
    """
    config = _merged_config(config, overrides)
    # One run per checkpoint folder, from before anything there is read until the run ends.
    with holding(config.checkpoint_dir, program="bit_tf.distill", flag="checkpoint_dir"):
        return _distill(teacher, student, train, validation, config)


def _distill(
    teacher: str | keras.Model,
    student: str | keras.Model,
    train: Any,
    validation: Any,
    config: DistillConfig,
) -> tuple[keras.Model, keras.callbacks.History]:
    """`distill` once its checkpoint folder is held."""
    train = _as_source(train, "train")
    validation = _as_source(validation, "validation")
    if train is None:
        raise ValueError("train is required.")
    policy = resolve_dtype_policy(config.dtype) if isinstance(student, str) else None
    if config.dtype is not None and not isinstance(student, str):
        raise ValueError(
            f"dtype={config.dtype!r} applies to a student name; build the student with "
            "bit_tf.create_model(..., dtype=...) instead."
        )
    student_name = student if isinstance(student, str) else student.name
    crop = _crop(train, student_name, config)
    if config.gradient_accumulation_steps not in (None, "auto"):
        accumulation_and_micro_batch(config)  # a number that cannot work: before the teacher
    with (config.strategy or tf.distribute.get_strategy()).scope():
        teacher = load_teacher(teacher, clone=config.strategy is not None)
    # Planned once the teacher's weights are in memory; the student's activations are kept
    # for the backward pass, the teacher's are not.
    # A tf.data train input comes in batches of its own: "auto" keeps them whole.
    accumulation, micro_batch = accumulation_and_micro_batch(
        config,
        student,
        crop if isinstance(train, data_lib.ImageSource) else None,
        policy,
        config.strategy or tf.distribute.get_strategy(),
    )
    strategy = _strategy_for(micro_batch, config.strategy)
    inputs = _input_pipelines(train, validation, crop, config, micro_batch)
    _check_teacher_classes(teacher, inputs.num_classes)
    total_steps, warmup, validation_every = _run_schedule(inputs.dataset_size, config)
    settings = {
        "teacher": teacher_fingerprint(teacher),
        "student": student_name,
        "student_weights": config.student_weights,
        "dataset": _dataset_identity(train),
        "num_classes": inputs.num_classes,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": accumulation,
        "crop": crop,
        "total_steps": total_steps,
        "warmup_steps": warmup,
        "base_lr": config.base_lr,
        "weight_decay": config.weight_decay,
        "temperature": config.temperature,
        "mixup_alpha": config.mixup_alpha,
        "dtype": policy.name if policy is not None else None,
        "augmentation": {"min_crop_area": config.min_crop_area, "random_flip": config.random_flip},
        "seed": config.seed,
    }
    found = None
    if config.checkpoint_dir:
        found = find_resumable(config.checkpoint_dir, settings, config.overwrite)
    progress = {"settings": settings, "step": 0, "finished": False}
    with strategy.scope():
        if found is not None:
            distiller, progress = load_resumable(*found, accumulation)
            distiller.set_teacher(teacher)
        else:
            if config.seed is not None:  # the same initial weights for a student name
                keras.utils.set_random_seed(config.seed)
            student_model = _student_model(student, inputs.num_classes, train, config, policy)
            distiller = Distiller(student_model, teacher, temperature=config.temperature)
            optimizer = distillation_optimizer(
                config.base_lr,
                config.weight_decay,
                total_steps,
                warmup,
                config.clip_norm,
                accumulation,
            )
            distiller.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    run = RunProgress(config.checkpoint_dir, progress, total_steps, accumulation, config.base_lr)
    callbacks = _all_callbacks(Checkpointer(run), config.callbacks, config.logdir)
    was_trainable = teacher.trainable
    teacher.trainable = False
    try:
        history = _fit_segments(distiller, inputs, run, validation_every, callbacks, config)
    finally:
        teacher.trainable = was_trainable
    return distiller.student, history


def _merged_config(config: DistillConfig | None, overrides: dict) -> DistillConfig:
    """`config` (or the defaults) with the keyword `overrides` in place of its fields."""
    if config is None:
        config = DistillConfig()
    elif not isinstance(config, DistillConfig):
        raise TypeError(
            f"config must be a bit_tf.distill.DistillConfig, got {type(config).__name__}."
        )
    for name in overrides:
        if name not in _FIELDS:
            raise TypeError(
                f"distill() got an unexpected keyword argument {name!r}; its settings are "
                f"the fields of DistillConfig: {', '.join(_FIELDS)}."
            )
    config = dataclasses.replace(config, **overrides)
    if not config.temperature > 0:
        raise ValueError(f"temperature must be positive, got {config.temperature!r}.")
    if config.base_lr < 0 or config.weight_decay < 0:
        raise ValueError(
            f"base_lr ({config.base_lr!r}) and weight_decay ({config.weight_decay!r}) must not "
            "be negative."
        )
    return config


def load_teacher(teacher: str | keras.Model, clone: bool = False) -> keras.Model:
    """The teacher model: a Keras model as given (or a copy, `clone`: into the current
    `tf.distribute` strategy's scope), a `.keras` file, or a released checkpoint name with a
    head.

    Raises:
        ValueError: a name that is neither a `.keras` file nor a released name with a head.

    Example:
        >>> load_teacher("bit_finetune/model.keras").output_shape
        (None, 10)
    """
    if isinstance(teacher, keras.Model):
        if not clone:
            return teacher
        copy = keras.models.clone_model(teacher)
        copy.set_weights(teacher.get_weights())
        return copy
    if not isinstance(teacher, str):
        raise TypeError(
            f"teacher must be a Keras model, a .keras path or a released checkpoint name, got "
            f"{type(teacher).__name__}."
        )
    if teacher.endswith(".keras"):
        return keras.saving.load_model(teacher, compile=False)
    release = find_release(teacher)
    if release is None or not release.num_classes:
        raise ValueError(
            f"teacher={teacher!r} is neither a .keras file nor a released checkpoint name with "
            "a head (e.g. 'BiT-M-R152x2-teacher-224', 'BiT-M-R50x1-ILSVRC2012'); see "
            "bit_tf.list_released_checkpoints()."
        )
    return create_model(teacher, weights=teacher)


def teacher_fingerprint(teacher: keras.Model) -> dict:
    """What identifies a teacher in a run's settings: its name, its parameter count and a digest
    of its last weighted layer (its head), so that a run resumes only with the same teacher.

    Example:
        >>> teacher_fingerprint(teacher)
        {'name': 'bit_s_r26x1', 'parameters': 13958986, 'head_sha256': '3f9a...'}
    """
    weighted = [layer for layer in teacher.layers if layer.weights] or [teacher]
    digest = hashlib.sha256()
    for array in weighted[-1].get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return {
        "name": teacher.name,
        "parameters": int(teacher.count_params()),
        "head_sha256": digest.hexdigest()[:16],
    }


def _check_teacher_classes(teacher: keras.Model, num_classes: int) -> None:
    shape = teacher.output_shape
    if not isinstance(shape, tuple) or len(shape) != 2 or shape[-1] != num_classes:
        raise ValueError(
            f"The teacher {teacher.name!r} outputs {shape}, not the logits of the task's "
            f"{num_classes} classes (batch, {num_classes}); give a teacher fine-tuned on this "
            "task."
        )


def _crop(train, student_name: str, config: DistillConfig) -> int | None:
    """The crop size: the config's, else the HyperRule's for an ImageSource's images."""
    if config.crop is None and isinstance(train, data_lib.ImageSource):
        return resolve_resolution(train, student_name, None, None)[1]
    return config.crop


def _input_pipelines(
    train, validation, crop: int | None, config: DistillConfig, micro_batch: int
) -> _Inputs:
    """The consistent train stream and the validation batches."""
    if isinstance(train, data_lib.ImageSource):
        if isinstance(validation, data_lib.ImageSource):
            if validation.num_classes != train.num_classes:
                raise ValueError(
                    f"train has {train.num_classes} classes but validation has "
                    f"{validation.num_classes}; they must be the same classification task."
                )
        seed = data_lib.resolve_seed(config.seed)

        def train_stream(start_batch: int) -> tf.data.Dataset:
            return consistent_batches(
                train,
                micro_batch,
                crop,
                mixup_alpha=config.mixup_alpha,
                seed=seed,
                min_crop_area=config.min_crop_area,
                random_flip=config.random_flip,
                cache=config.cache,
                start_batch=start_batch,
            )

        num_classes, dataset_size = train.num_classes, train.num_examples
        log.info(
            "Distilling on %s: %d examples, %d classes, crop %d, MixUp %s.",
            train.name,
            dataset_size,
            num_classes,
            crop,
            config.mixup_alpha,
        )
    else:
        if config.dataset_size is None and config.steps is None:
            raise ValueError(
                "A tf.data.Dataset train input needs dataset_size= (for the schedule) or steps=."
            )

        def train_stream(start_batch: int) -> tf.data.Dataset:
            return train.repeat()  # a dataset given as it is starts at its beginning

        num_classes, dataset_size = int(train.element_spec[1].shape[-1]), config.dataset_size
    validation_batches = validation
    if isinstance(validation, data_lib.ImageSource):
        if crop is None:
            raise ValueError("crop= is needed to evaluate an ImageSource next to a tf.data train.")
        validation_batches = data_lib.eval_pipeline(validation, micro_batch, crop)
    return _Inputs(train_stream, validation_batches, num_classes, dataset_size)


def _run_schedule(dataset_size: int | None, config: DistillConfig) -> tuple[int, int, int]:
    """(total steps, warm-up steps, steps between validations)."""
    if config.steps is not None:
        total_steps = int(config.steps)
    else:
        total_steps = patient_steps(dataset_size, config.batch_size, config.patience)
    if total_steps < 1:
        raise ValueError(f"steps must be positive, got {total_steps!r}.")
    warmup = config.warmup_steps
    if warmup is None:
        warmup = warmup_steps(total_steps, dataset_size)
    if not 0 <= warmup <= total_steps:
        raise ValueError(f"warmup_steps={warmup!r} must be between 0 and steps={total_steps}.")
    validation_every = int(
        config.validation_every or max(1, math.ceil(total_steps / VALIDATIONS_PER_RUN))
    )
    return total_steps, int(warmup), validation_every


def _student_model(
    student: str | keras.Model,
    num_classes: int,
    train,
    config: DistillConfig,
    policy: keras.DTypePolicy | None,
) -> keras.Model:
    """The student: a named BiT with a new zero head, or the model given (a copy under an
    explicit strategy), with a new head unless it already outputs `num_classes` logits."""
    class_names = train.class_names if isinstance(train, data_lib.ImageSource) else None
    if isinstance(student, str):
        backbone = create_model(
            student, num_classes=None, weights=config.student_weights, dtype=policy
        )
        return _with_new_head(backbone, num_classes, class_names)
    if config.student_weights is not None:
        raise ValueError("student_weights= is for student names; load weights into the model.")
    if config.strategy is not None:
        copy = keras.models.clone_model(student)
        copy.set_weights(student.get_weights())
        student = copy
    if student.output_shape == (None, num_classes):
        return student
    return _with_new_head(student, num_classes, class_names)
