"""What a distillation run records of its recipe and variant, the checks of those settings, and
the validation batches they call for.

`recipe_settings` is the part of a run's `progress.json` settings that the recipe and the
variant decide (the learning rate, weight decay, temperature, batch, MixUp, the recipe's row
and its source, the variant, the teacher's crop and the evaluation's resize): a resumed run must
have the same. `evaluation_batches` gives the validation images as big_vision evaluates them
(`bit_tf.data.eval_crops`), with the teacher's own size where it has one.

Example:
    >>> from bit_tf.distill.run_settings import evaluation_batches
    >>> batches = evaluation_batches(validation, 256, crop=224, teacher_crop=384)
    >>> images, labels = next(iter(batches))
    >>> images["student"].shape[1], images["teacher"].shape[1]
    (224, 384)
"""

from __future__ import annotations

import tensorflow as tf

from bit_tf.data.eval_crops import EVAL_RESIZES, eval_short_side
from bit_tf.data.pipelines import ImageSource, eval_pipeline
from bit_tf.distill.recipes import DistillRecipe
from bit_tf.distill.variants import VARIANTS, variant_mixup

__all__ = ["check_variant_settings", "evaluation_batches", "recipe_settings"]


def check_variant_settings(config) -> None:
    """Raises ValueError for a `DistillConfig` variant, teacher crop or evaluation resize that
    cannot work.

    Example:
        >>> check_variant_settings(DistillConfig(variant="noisy"))
        Traceback (most recent call last):
        ValueError: variant must be one of function_matching, consistent, independent, ...
    """
    if config.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {config.variant!r}.")
    if config.eval_resize not in EVAL_RESIZES:
        raise ValueError(
            f"eval_resize must be one of {', '.join(EVAL_RESIZES)}; got {config.eval_resize!r}."
        )
    crop = config.teacher_crop
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(f"teacher_crop must be a positive integer, got {crop!r}.")


def recipe_settings(config, recipe: DistillRecipe) -> dict:
    """The run settings the recipe and the variant decide, as `progress.json` records them.

    Example:
        >>> recipe_settings(config, RECIPES["pet", "fast"])["recipe"]
        'pet/fast'
    """
    return {
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        "variant": config.variant,
        "batch_size": config.batch_size,
        "base_lr": config.base_lr,
        "weight_decay": config.weight_decay,
        "temperature": config.temperature,
        "mixup_alpha": variant_mixup(config.variant, config.mixup_alpha),
        "teacher_crop": config.teacher_crop,
        "eval_resize": config.eval_resize,
        "augmentation": {"min_crop_area": config.min_crop_area, "random_flip": config.random_flip},
        "seed": config.seed,
    }


def evaluation_batches(
    source: ImageSource,
    batch_size: int,
    crop: int,
    teacher_crop: int | None = None,
    eval_resize: str = "short_side_crop",
) -> tf.data.Dataset:
    """The validation batches of a distillation run: images at `crop` (shorter side resized
    to `eval_short_side(crop)` and the central crop, or resized straight for "resize"); with a
    `teacher_crop` of another size, ({"student": ..., "teacher": ...}, labels).

    Example:
        >>> student.evaluate(evaluation_batches(validation, 256, crop=128))
    """

    def batches(size: int) -> tf.data.Dataset:
        short_side = eval_short_side(size) if eval_resize == "short_side_crop" else None
        return eval_pipeline(source, batch_size, size, short_side=short_side)

    student = batches(crop)
    if not teacher_crop or teacher_crop == crop:
        return student
    both = tf.data.Dataset.zip(student, batches(teacher_crop))
    return both.map(lambda s, t: ({"student": s[0], "teacher": t[0]}, s[1]))
