"""The inputs of the distillation variants that Beyer et al. (2022) compare, and of a teacher and
a student at two resolutions.

`variant` names what the teacher sees next to the student:

- "function_matching" (the default, the paper's recipe): both see the same inception crop and
  flip, and the batch is mixed with MixUp (one coefficient and partner for both models);
- "consistent": the same crop and flip for both, no MixUp;
- "independent": each model gets its own inception crop and flip of the image ("independent
  noise"), no MixUp;
- "fixed_teacher": the teacher's outputs are computed once, before training, on the unaugmented
  images (shorter side resized and the central crop, as evaluation sees them,
  `bit_tf.data.eval_crops`) and kept in memory (one row of logits per training example); the student
  sees its own inception crop and flip, no MixUp (a precomputed target cannot follow a mixed
  image).

With `teacher_crop` different from the student's `crop`, the teacher sees the same box resized
to its own size (big_vision's FlexiViT distillation builds its 384 -> 224 input this way:
`configs/proj/flexi/i1k_deit3_distill.py` L74-80, one crop copied and resized per model). The
batches are then ({"student": images, "teacher": images}, labels); a fixed teacher's are
({"student": images, "teacher_logits": logits}, labels); `bit_tf.distill.model.Distiller` takes
all three forms.

Example:
    >>> from bit_tf import data
    >>> from bit_tf.distill.variants import variant_batches
    >>> train, _ = data.load_digits()
    >>> views, labels = next(iter(variant_batches(train, 8, "independent", 32, 48, seed=0)))
    >>> views["student"].shape, views["teacher"].shape
    (TensorShape([8, 32, 32, 3]), TensorShape([8, 48, 48, 3]))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bit_tf.data.encoded_cache import CachePolicy
from bit_tf.data.eval_crops import eval_short_side
from bit_tf.data.example_order import shuffled_positions
from bit_tf.data.mixup import mix_batches
from bit_tf.data.pipelines import (
    AUTOTUNE,
    PREFETCH_BATCHES,
    ImageSource,
    eval_pipeline,
    example_seed,
    pipeline_options,
    resolve_seed,
    training_records,
)
from bit_tf.distill.data import MIN_CROP_AREA, consistent_batches, inception_box
from bit_tf.distill.recipes import VARIANTS

__all__ = ["VARIANTS", "fixed_teacher_targets", "variant_batches", "variant_mixup"]

# Folded into an example's seed for the teacher's own crop of "independent".
_TEACHER_STREAM = 0x54454143  # "TEAC"


def variant_mixup(variant: str, mixup_alpha: float) -> float:
    """The MixUp alpha a variant trains with: `mixup_alpha` for function matching, else 0.

    Raises:
        ValueError: an unknown variant.

    Example:
        >>> variant_mixup("consistent", 1.0)
        0.0
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}.")
    return float(mixup_alpha) if variant == "function_matching" else 0.0


def variant_batches(
    source: ImageSource,
    batch_size: int,
    variant: str,
    crop: int,
    teacher_crop: int | None = None,
    mixup_alpha: float = 1.0,
    seed: int | None = None,
    min_crop_area: float = MIN_CROP_AREA,
    random_flip: bool = True,
    cache: bool | str = "auto",
    start_batch: int = 0,
    teacher_targets: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Endless training batches of `variant` (see the module's docstring); `teacher_targets`
    (from `fixed_teacher_targets`) for "fixed_teacher".

    Example:
        >>> batches = variant_batches(train, 512, "consistent", 224, teacher_crop=384, seed=0)
    """
    alpha = variant_mixup(variant, mixup_alpha)
    teacher_crop = teacher_crop or crop
    if variant == "fixed_teacher":
        if teacher_targets is None:
            raise ValueError("variant='fixed_teacher' needs teacher_targets.")
        return _fixed_teacher_batches(
            source, batch_size, crop, teacher_targets, seed, min_crop_area, random_flip, cache,
            start_batch,
        )  # fmt: skip
    if variant != "independent" and teacher_crop == crop:
        return consistent_batches(
            source, batch_size, crop, alpha, seed, min_crop_area, random_flip, cache, start_batch
        )
    return _two_view_batches(
        source, batch_size, (crop, teacher_crop), variant == "independent", alpha, seed,
        min_crop_area, random_flip, cache, start_batch,
    )  # fmt: skip


def _view(image, size, pair, min_crop_area, random_flip):
    """An inception crop of `image` at `size`, flipped at random, from the seed `pair`."""
    view = tf.image.resize(inception_box(image, pair, min_crop_area), (size, size))
    if random_flip:
        view = tf.image.stateless_random_flip_left_right(view, seed=pair[::-1])
    return view


def _two_view_batches(
    source, batch_size, sizes, independent, alpha, seed, min_crop_area, random_flip, cache,
    start_batch,
):  # fmt: skip
    """({"student", "teacher"}, labels): one box at two sizes, or (independent) two boxes."""
    seed, records, decode = training_records(source, batch_size, seed, cache, start_batch)
    student_crop, teacher_crop = sizes

    def augment(position, record, label):
        image, decoded = decode(record, 0)
        pair = example_seed(seed, position)
        student = _view(image, student_crop, pair, min_crop_area, random_flip)
        if independent:
            other = tf.random.experimental.stateless_fold_in(pair, _TEACHER_STREAM)
            teacher = _view(image, teacher_crop, other, min_crop_area, random_flip)
        else:
            teacher = _view(image, teacher_crop, pair, min_crop_area, random_flip)
        views = {"student": student, "teacher": teacher}
        return views, tf.one_hot(label, source.num_classes, dtype=tf.float32), decoded

    return _batched(records.map(augment, num_parallel_calls=AUTOTUNE), batch_size, alpha, seed,
                    start_batch)  # fmt: skip


def _batched(dataset, batch_size, alpha, seed, start_batch):
    dataset = dataset.filter(lambda views, label, decoded: decoded)
    dataset = dataset.map(lambda views, label, decoded: (views, label))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if alpha:
        dataset = mix_batches(dataset, alpha, seed=seed, start_batch=start_batch)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())


def fixed_teacher_targets(
    teacher: keras.Model, source: ImageSource, crop: int, batch_size: int
) -> np.ndarray:
    """The teacher's logits for every example of `source`, in its order, computed once on the
    unaugmented image (shorter side resized to `eval_short_side(crop)`, central crop).

    Raises:
        ValueError: an image that cannot be decoded (its row could not be matched).

    Example:
        >>> targets = fixed_teacher_targets(teacher, train, crop=128, batch_size=256)
        >>> targets.shape
        (1020, 102)
    """
    batches = eval_pipeline(
        source, batch_size, crop, cache="none", short_side=eval_short_side(crop)
    )
    rows = [
        np.asarray(keras.ops.convert_to_numpy(teacher(images, training=False)), np.float32)
        for images, _ in batches
    ]
    targets = np.concatenate(rows) if rows else np.zeros((0, source.num_classes), np.float32)
    if len(targets) != source.num_examples:
        raise ValueError(
            f"variant='fixed_teacher': {source.num_examples - len(targets)} images of "
            f"{source.name!r} could not be decoded; remove them, or use another variant."
        )
    return targets


def _fixed_teacher_batches(
    source, batch_size, crop, targets, seed, min_crop_area, random_flip, cache, start_batch
):
    """({"student": crops, "teacher_logits": the example's row of `targets`}, labels)."""
    access = source.reader.access(source.indices, CachePolicy.parse(cache))
    if access is None:
        raise ValueError(
            f"variant='fixed_teacher' reads {source.name!r} by example, which needs its records "
            f"in a cache: give cache='memory' or a cache folder (got cache={cache!r})."
        )
    seed = resolve_seed(seed)
    logits = tf.constant(targets, tf.float32)
    positions = shuffled_positions(access.size, seed, start_batch * batch_size)

    def augment(position, index):
        record, label = access.lookup(index)
        image, decoded = access.decode(record, 0)
        student = _view(image, crop, example_seed(seed, position), min_crop_area, random_flip)
        views = {"student": student, "teacher_logits": tf.gather(logits, index)}
        return views, tf.one_hot(label, source.num_classes, dtype=tf.float32), decoded

    return _batched(positions.map(augment, num_parallel_calls=AUTOTUNE), batch_size, 0.0, seed,
                    start_batch)  # fmt: skip
