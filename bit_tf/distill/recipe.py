"""Knowledge distillation of a big classifier into a small BiT with a patient, consistent teacher.

`distill(teacher, student, train, validation)` trains the student to match the teacher's
function, as Beyer et al. ("Knowledge distillation: A good teacher is patient and consistent",
2022) turned BiT-M-R152x2 into a BiT-R50x1 of 82.8% ImageNet top-1:

- function matching (the default `variant`): in every step the teacher and the student see the
  same aggressively augmented images (an inception crop, a flip, MixUp with Beta(1, 1) applied
  once to the batch; `bit_tf.distill.data`), and the teacher's logits are computed then, in
  inference mode (`bit_tf.distill.model.Distiller`); the paper's other variants (consistent,
  independent noise, a fixed teacher) and a teacher at its own resolution are
  `bit_tf.distill.variants`';
- the loss is the KL divergence between the teacher's and the student's softmax at a
  temperature (`bit_tf.distill.model.DistillationLoss`); labels are not used;
- patient: Adam with warm-up and cosine decay, gradients clipped at norm 1.0, kernel-only
  weight decay (`bit_tf.distill.optimizer`) over long schedules;
- the rate, weight decay, temperature, batch, resolution, length and warm-up are a row of
  big_vision's configurations for the data set and the fast/medium/long length
  (`bit_tf.distill.recipes`), each overridable; validation images are resized on their shorter
  side and centrally cropped, as big_vision evaluates (`bit_tf.data.eval_crops`).

The run itself is fine-tuning's (`bit_tf.training.run.TrainingRun`): with a `checkpoint_dir`
it keeps `last.keras` and `best.keras` (the student and the optimizer; the teacher is not
saved, it never changes), resumes an unfinished run, stops on a NaN loss with
`TrainingDivergedError` and on SIGTERM or SIGINT with `TrainingInterruptedError` after a
checkpoint (`bit_tf.training.checkpoints`).

Example:
    >>> import bit_tf
    >>> from bit_tf import data
    >>> train, validation = data.split(data.from_folder("flowers/"), 0.2)
    >>> student, history = bit_tf.distill(
    ...     "runs/flowers/model.keras", "BiT-S-R50x1", train, validation,
    ...     recipe="flowers", patience="fast", checkpoint_dir="runs/distill")
    >>> history.history["val_agreement"][-1]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.data.resolve import resolve
from bit_tf.distill.data import MIN_CROP_AREA
from bit_tf.distill.model import DistillationLoss, Distiller
from bit_tf.distill.optimizer import distillation_optimizer
from bit_tf.distill.recipes import with_recipe
from bit_tf.distill.run_settings import (
    check_variant_settings,
    evaluation_batches,
    recipe_settings,
)
from bit_tf.distill.schedule import patient_steps, warmup_steps
from bit_tf.distill.variants import fixed_teacher_targets, read_targets, variant_batches
from bit_tf.finetune.recipe import resolve_resolution
from bit_tf.models.create import create_model
from bit_tf.models.registry import find_release
from bit_tf.training.accumulation import accumulation_and_micro_batch, strategy_for
from bit_tf.training.checkpoints import TrainingDivergedError, TrainingInterruptedError
from bit_tf.training.config import TrainingConfig, merged_config
from bit_tf.training.inputs import (
    Inputs,
    check_same_task,
    class_names_of,
    dataset_identity,
    given_train_stream,
)
from bit_tf.training.models import copied, dtype_policy_for, with_new_head
from bit_tf.training.run import TrainingRun
from bit_tf.training.run_lock import holding
from bit_tf.training.segments import validation_interval

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
class DistillConfig(TrainingConfig):
    """The settings of one `distill` run; each field is also a keyword of `distill`.

    A setting left None comes from the run's recipe (`bit_tf.distill.recipes`: big_vision's
    `configs/proj/distill/` settings per data set and schedule length); one given keeps its
    value. recipe="legacy" gives bit-tf's earlier single setting (lr 0.003, weight decay 3e-4,
    temperature 1, batch 512, the HyperRule's crop).

    Recipe and variant:
        recipe: "auto" (the row of the TFDS data set the train images come from, else by the
            number of training examples), "flowers", "pet", "food", "sun", "imagenet", "size"
            or "legacy" (`bit_tf.distill.recipes.pick_recipe`).
        variant: "function_matching" (same crop for both models, and MixUp), "consistent" (same
            crop, no MixUp), "independent" (a crop of its own for each model, no MixUp) or
            "fixed_teacher" (the teacher's outputs computed once on the unaugmented images;
            `bit_tf.distill.variants`).
        teacher_crop: the teacher's square size when it differs from the student's `crop`
            (e.g. 384 for a student at 224): it sees the same crop at its own size.
        eval_resize: "short_side_crop" (big_vision's: shorter side resized, central crop;
            `bit_tf.data.eval_crops`) or "resize" (straight to the crop, as before).

    Models:
        student_weights: for a student name: a released checkpoint name, a path or a URL to
            start from; None for random weights (as the paper's students).
        dtype: for a student name, the Keras dtype policy ("mixed_bfloat16", ...); None for
            Keras' global policy.
        temperature: T of the softmax both outputs are compared at; None for the recipe's
            (1 on ImageNet, 1 to 10 on the small data sets).

    Input:
        batch_size: the global batch per optimizer update; None for the recipe's (512; 4096 on
            ImageNet).
        gradient_accumulation_steps: micro-batches per update (same batch, less memory);
            "auto" splits the batch only where the student's step would not fit the memory
            available (`bit_tf.finetune.accumulation_and_micro_batch`).
        crop: the student's square size (and the teacher's, unless `teacher_crop`); None for
            the recipe's (128; 224 on ImageNet; "legacy": the HyperRule's for the images).
        mixup_alpha: MixUp's Beta(alpha, alpha) of function matching (1.0: the paper's
            `mixup p=1`); 0 for none. The other variants train without MixUp.
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
        steps: optimizer updates; None for the recipe's epochs of `patience` on the train set.
        patience: "fast", "medium" or "long": the recipe's schedule length; medium is 100k
            epochs on Flowers, 3k on Pet, 1k on Food and SUN, 1,200 on ImageNet.
        base_lr: Adam's peak learning rate, after the warm-up; None for the recipe's.
        weight_decay: decoupled weight decay of the kernels at the peak (big_vision's `wd`);
            None for the recipe's.
        warmup_steps: linear warm-up; None for the recipe's 1,500 (5,000 on ImageNet), at most
            a quarter of the run.
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

    recipe: str = "auto"
    variant: str = "function_matching"
    teacher_crop: int | None = None
    eval_resize: str = "short_side_crop"
    student_weights: str | None = None
    temperature: float | None = None
    mixup_alpha: float = 1.0
    min_crop_area: float = MIN_CROP_AREA
    patience: str = "medium"
    weight_decay: float | None = None
    clip_norm: float | None = 1.0
    # Shared fields whose default is the recipe's here (None), not TrainingConfig's.
    batch_size: int | None = None
    base_lr: float | None = None


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
    train = resolve(train, "train")
    validation = resolve(validation, "validation", like=train)
    if train is None:
        raise ValueError("train is required.")
    config, recipe = with_recipe(config, *_name_and_size(train, config))
    policy = dtype_policy_for(student, config.dtype, role="student")
    student_name = student if isinstance(student, str) else student.name
    crop = _crop(train, student_name, config)
    if config.gradient_accumulation_steps not in (None, "auto"):
        accumulation_and_micro_batch(config)  # a number that cannot work: before the teacher
    in_use = config.strategy or tf.distribute.get_strategy()
    with in_use.scope():
        teacher = load_teacher(teacher, clone=config.strategy is not None)
    # Planned once the teacher's weights are in memory; the student's activations are kept
    # for the backward pass, the teacher's are not.
    # A tf.data train input comes in batches of its own: "auto" keeps them whole.
    image_crop = crop if isinstance(train, data_lib.ImageSource) else None
    accumulation, micro_batch = accumulation_and_micro_batch(
        config, student, image_crop, policy, in_use
    )
    strategy = strategy_for(micro_batch, config.strategy)
    targets = _fixed_targets(teacher, train, crop, config, micro_batch)
    inputs = _input_pipelines(train, validation, crop, config, micro_batch, targets)
    _check_teacher_classes(teacher, inputs.num_classes)
    run = _training_run(teacher, student_name, train, inputs, crop, accumulation, policy, config)
    run.settings.update(recipe_settings(config, recipe))

    def build() -> Distiller:
        student_model = _student_model(student, inputs.num_classes, train, config, policy)
        return _new_distiller(student_model, teacher, config, run.settings)

    distiller = run.resume_or_build(
        strategy, build, restore=lambda found: found.set_teacher(teacher)
    )
    with _frozen(teacher):
        history = run.fit(distiller, inputs)
    return distiller.student, history


def _training_run(
    teacher: keras.Model,
    student_name: str,
    train,
    inputs: Inputs,
    crop: int | None,
    accumulation: int,
    policy: keras.DTypePolicy | None,
    config: DistillConfig,
) -> TrainingRun:
    """The run: its schedule, and the settings that identify it (in its progress.json) but
    those of its recipe and variant."""
    total_steps, warmup, validation_every = _run_schedule(inputs.dataset_size, config)
    settings = {
        "teacher": teacher_fingerprint(teacher),
        "student": student_name,
        "student_weights": config.student_weights,
        "dataset": dataset_identity(train),
        "num_classes": inputs.num_classes,
        "gradient_accumulation_steps": accumulation,
        "crop": crop,
        "total_steps": total_steps,
        "warmup_steps": warmup,
        "dtype": policy.name if policy is not None else None,
    }
    return TrainingRun(config, settings, total_steps, validation_every, accumulation)


@contextlib.contextmanager
def _frozen(teacher: keras.Model):
    """The teacher set non-trainable for the run, and restored after it."""
    was_trainable = teacher.trainable
    teacher.trainable = False
    try:
        yield teacher
    finally:
        teacher.trainable = was_trainable


def _new_distiller(
    student: keras.Model, teacher: keras.Model, config: DistillConfig, settings: dict
) -> Distiller:
    """A compiled Distiller of `student` (built in the current strategy's scope) and `teacher`,
    with the optimizer of the run's `settings`."""
    total_steps, warmup = settings["total_steps"], settings["warmup_steps"]
    accumulation = settings["gradient_accumulation_steps"]
    distiller = Distiller(student, teacher, temperature=config.temperature)
    optimizer = distillation_optimizer(
        config.base_lr, config.weight_decay, total_steps, warmup, config.clip_norm, accumulation
    )
    distiller.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    return distiller


def _merged_config(config: DistillConfig | None, overrides: dict) -> DistillConfig:
    """`config` (or the defaults) with the keyword `overrides` in place of its fields."""
    config = merged_config(DistillConfig, config, overrides, caller="distill")
    if config.temperature is not None and not config.temperature > 0:
        raise ValueError(f"temperature must be positive, got {config.temperature!r}.")
    if (config.base_lr or 0) < 0 or (config.weight_decay or 0) < 0:
        raise ValueError(
            f"base_lr ({config.base_lr!r}) and weight_decay ({config.weight_decay!r}) must not "
            "be negative."
        )
    check_variant_settings(config)
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
        return copied(teacher) if clone else teacher
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
    train, validation, crop: int | None, config: DistillConfig, micro_batch: int, targets=None
) -> Inputs:
    """The variant's train stream and the validation batches."""
    batches = validation
    if isinstance(validation, data_lib.ImageSource):
        if crop is None:
            raise ValueError("crop= is needed to evaluate an ImageSource next to a tf.data train.")
        batches = evaluation_batches(
            validation, micro_batch, crop, config.teacher_crop, config.eval_resize
        )
    if not isinstance(train, data_lib.ImageSource):
        train_stream, num_classes, dataset_size = given_train_stream(train, config)
        return Inputs(train_stream, batches, num_classes, dataset_size)
    check_same_task(train, validation)
    seed = data_lib.resolve_seed(config.seed)

    def train_stream(start_batch: int) -> tf.data.Dataset:
        return variant_batches(
            train,
            micro_batch,
            config.variant,
            crop,
            teacher_crop=config.teacher_crop,
            mixup_alpha=config.mixup_alpha,
            seed=seed,
            min_crop_area=config.min_crop_area,
            random_flip=config.random_flip,
            cache=config.cache,
            start_batch=start_batch,
            teacher_targets=None if targets is None else targets(),
        )

    log.info(
        "Distilling on %s: %d examples, %d classes, crop %d, %s.",
        train.name,
        train.num_examples,
        train.num_classes,
        crop,
        config.variant,
    )
    return Inputs(train_stream, batches, train.num_classes, train.num_examples)


def _name_and_size(train, config: DistillConfig) -> tuple[str | None, int | None]:
    """(the train set's name, its size) as the recipe is picked by: an ImageSource's, or the
    `dataset_size` given with a tf.data input."""
    if isinstance(train, data_lib.ImageSource):
        return train.name, train.num_examples
    return None, config.dataset_size


def _fixed_targets(teacher, train, crop, config: DistillConfig, batch_size: int):
    """None, or for a fixed teacher a function that returns its outputs for every train
    example: computed once, when the train stream is first made (after the checkpoint folder's
    run was found to be this one), or read from the file a run in the same folder wrote for
    this teacher, these images and this crop."""
    if config.variant != "fixed_teacher":
        return None
    if not isinstance(train, data_lib.ImageSource):
        raise ValueError("variant='fixed_teacher' needs train images, not a tf.data.Dataset.")
    teacher_crop = config.teacher_crop or crop

    @functools.cache
    def targets() -> np.ndarray:
        path = None
        if config.checkpoint_dir:
            identity = [teacher_fingerprint(teacher), dataset_identity(train), teacher_crop]
            digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
            path = os.path.join(config.checkpoint_dir, f"fixed_teacher_outputs-{digest[:16]}.npy")
            found = read_targets(path, train.num_examples, train.num_classes)
            if found is not None:
                log.info("Reading the fixed teacher's outputs from %s.", path)
                return found
        log.info("Computing the fixed teacher's outputs for %d images.", train.num_examples)
        return fixed_teacher_targets(teacher, train, teacher_crop, batch_size, path)

    return targets


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
    validation_every = validation_interval(total_steps, config.validation_every)
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
    class_names = class_names_of(train)
    if isinstance(student, str):
        backbone = create_model(
            student, num_classes=None, weights=config.student_weights, dtype=policy
        )
        return with_new_head(backbone, num_classes, class_names)
    if config.student_weights is not None:
        raise ValueError("student_weights= is for student names; load weights into the model.")
    if config.strategy is not None:
        student = copied(student)
    if student.output_shape == (None, num_classes):
        return student
    return with_new_head(student, num_classes, class_names)
