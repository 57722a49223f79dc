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
  `bit_tf.data.eval_crops`) and kept in a file on the disk, read memory-mapped (one row of
  logits per training example; a run's checkpoint folder keeps it for the resume); the student
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

import os
import tempfile

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
from bit_tf.training.atomic import write_through

__all__ = [
    "VARIANTS",
    "fixed_teacher_targets",
    "read_targets",
    "variant_batches",
    "variant_mixup",
]

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
    teacher: keras.Model,
    source: ImageSource,
    crop: int,
    batch_size: int,
    path: str | None = None,
) -> np.ndarray:
    """The teacher's logits for every example of `source`, in its order, computed once on the
    unaugmented image (shorter side resized to `eval_short_side(crop)`, central crop).

    The rows are written one batch at a time to the `.npy` file `path` (atomically: a whole file
    or none) and read back memory-mapped, so memory does not grow with the number of examples.
    Without `path` the file is a temporary one, removed once mapped (the mapping keeps its pages
    readable).

    Raises:
        ValueError: an image that cannot be decoded (its row could not be matched).

    Example:
        >>> targets = fixed_teacher_targets(teacher, train, crop=128, batch_size=256,
        ...                                 path="runs/flowers/fixed_teacher_outputs.npy")
        >>> targets.shape
        (1020, 102)
    """
    if path is not None:
        write_through(
            path, lambda temporary: _write_targets(teacher, source, crop, batch_size, temporary),
            suffix=".npy",
        )  # fmt: skip
        return np.load(path, mmap_mode="r")
    descriptor, temporary = tempfile.mkstemp(prefix="fixed_teacher_outputs-", suffix=".npy")
    os.close(descriptor)
    try:
        _write_targets(teacher, source, crop, batch_size, temporary)
        return np.load(temporary, mmap_mode="r")
    finally:
        os.remove(temporary)


def read_targets(path: str, num_examples: int, num_classes: int) -> np.ndarray | None:
    """The fixed teacher's outputs an earlier run wrote to `path`, memory-mapped, if that file
    is whole and holds one row of `num_classes` logits per example; else None.

    Example:
        >>> read_targets("runs/flowers/fixed_teacher_outputs.npy", 1020, 102).shape
        (1020, 102)
    """
    try:
        targets = np.load(path, mmap_mode="r")
    except (OSError, ValueError):  # missing, truncated, or not a .npy file
        return None
    expected = (num_examples, num_classes)
    if targets.shape != expected or targets.dtype != np.float32:
        return None
    return targets


def _write_targets(teacher, source: ImageSource, crop: int, batch_size: int, path: str) -> None:
    """Writes the teacher's logits for `source` to the new `.npy` file `path`, batch by batch."""
    batches = eval_pipeline(
        source, batch_size, crop, cache="none", short_side=eval_short_side(crop)
    )
    shape = (source.num_examples, source.num_classes)
    targets = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    written = 0
    for images, _ in batches:
        rows = np.asarray(keras.ops.convert_to_numpy(teacher(images, training=False)))
        if rows.shape[-1] != shape[1]:
            raise ValueError(
                f"The teacher {teacher.name!r} outputs {rows.shape[-1]} logits, not the "
                f"{shape[1]} of {source.name!r}."
            )
        targets[written : written + len(rows)] = rows
        written += len(rows)
    targets.flush()
    del targets
    if written != source.num_examples:
        raise ValueError(
            f"variant='fixed_teacher': {source.num_examples - written} images of "
            f"{source.name!r} could not be decoded; remove them, or use another variant."
        )


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
    num_classes = targets.shape[1]

    def row(index):  # read from the mapped file: the rows never become one graph constant
        return np.array(targets[int(index)], np.float32)

    def logits_of(index):
        logits = tf.numpy_function(row, [index], tf.float32, stateful=False)
        return tf.ensure_shape(logits, (num_classes,))

    positions = shuffled_positions(access.size, seed, start_batch * batch_size)

    def augment(position, index):
        record, label = access.lookup(index)
        image, decoded = access.decode(record, 0)
        student = _view(image, crop, example_seed(seed, position), min_crop_area, random_flip)
        views = {"student": student, "teacher_logits": logits_of(index)}
        return views, tf.one_hot(label, source.num_classes, dtype=tf.float32), decoded

    return _batched(positions.map(augment, num_parallel_calls=AUTOTUNE), batch_size, 0.0, seed,
                    start_batch)  # fmt: skip
