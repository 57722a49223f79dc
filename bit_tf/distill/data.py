"""The input of distillation: one aggressively augmented view of each image, for both models.

Beyer et al. (2022) find that a student matches its teacher best when both see exactly the
same augmented image ("consistent" teaching) and the augmentation is aggressive: an
inception-style crop (a random box of 5% to 100% of the image's area and aspect ratio 3/4 to
4/3, resized to the crop size), a random left-right flip, and MixUp with Beta(1, 1) on the
batch. `consistent_batches` makes one such batch per step; `bit_tf.distill.model.Distiller`
hands that same batch to the teacher and to the student. The MixUp is the package's
(`bit_tf.data.mixup`: one coefficient per batch, the batch mixed with a permutation of itself).

The input is read as fine-tuning's (`bit_tf.data.train_pipeline`): the records of the whole
dataset are shuffled every epoch and decoded after the shuffle, so memory does not grow with the
number of images or their size, and `start_batch` starts the stream where a resumed run was.

Example:
    >>> from bit_tf import data
    >>> from bit_tf.distill.data import consistent_batches
    >>> train, validation = data.load_digits()
    >>> images, labels = next(iter(consistent_batches(train, batch_size=32, crop=32, seed=0)))
    >>> images.shape, labels.shape
    (TensorShape([32, 32, 32, 3]), TensorShape([32, 10]))
"""

from __future__ import annotations

import math

import tensorflow as tf

from bit_tf.data.mixup import mix_batches
from bit_tf.data.pipelines import (
    AUTOTUNE,
    PREFETCH_BATCHES,
    ImageSource,
    example_seed,
    pipeline_options,
    training_records,
)

__all__ = ["MIN_CROP_AREA", "consistent_batches", "inception_box", "inception_crop"]

#: The smallest crop, as a fraction of the image's area (big_vision's `inception_crop`).
MIN_CROP_AREA = 0.05
#: The aspect ratios (width / height) a crop may have.
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def inception_crop(
    image: tf.Tensor, size: int, seed: tf.Tensor, min_area: float = MIN_CROP_AREA
) -> tf.Tensor:
    """A random box of `min_area` to all of the image's area (aspect 3/4 to 4/3), resized to
    `size` x `size`; `seed` (2 int64) decides the box.

    Example:
        >>> inception_crop(tf.zeros((8, 8, 3)), 32, tf.constant([0, 1], tf.int64)).shape
        TensorShape([32, 32, 3])
    """
    return tf.image.resize(inception_box(image, seed, min_area), (size, size))


def inception_box(image: tf.Tensor, seed: tf.Tensor, min_area: float = MIN_CROP_AREA) -> tf.Tensor:
    """The random box of `inception_crop`, not resized (to resize to two sizes, one per model).

    Example:
        >>> inception_box(tf.zeros((8, 8, 3)), tf.constant([0, 1], tf.int64), 1.0).shape
        TensorShape([8, 8, 3])
    """
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=(min_area, 1.0),
        use_image_if_no_bounding_boxes=True,
    )
    return tf.slice(image, begin, box_size)


def decode_size(crop: int, min_area: float) -> int:
    """The smallest side an image may be decoded at (`bit_tf.data.example_readers.Access`) so that
    the smallest crop of the widest aspect ratio still has `crop` pixels on each side.

    Example:
        >>> decode_size(128, 0.05)
        661
    """
    return math.ceil(crop * math.sqrt(ASPECT_RATIO_RANGE[1] / min_area))


def consistent_batches(
    source: ImageSource,
    batch_size: int,
    crop: int,
    mixup_alpha: float = 1.0,
    seed: int | None = None,
    min_crop_area: float = MIN_CROP_AREA,
    random_flip: bool = True,
    cache: bool | str = "auto",
    start_batch: int = 0,
    reduced_scale_decoding: bool = False,
) -> tf.data.Dataset:
    """Endless training batches for distillation: shuffle -> decode -> inception crop -> flip
    -> batch -> MixUp.

    Args:
        source: an `ImageSource`.
        batch_size: examples per batch (the last partial batch of a pass is never formed: the
            stream repeats).
        crop: the square size of the crops.
        mixup_alpha: MixUp's Beta(alpha, alpha), one coefficient per batch; 0 turns it off.
        seed: makes the order, crops, flips and MixUp deterministic; None for fresh randomness.
        min_crop_area: the smallest crop as a fraction of the image (0.05 in the paper); 1
            takes whole images.
        random_flip: flip left-right at random; False where a flip changes the label.
        cache: where encoded images may be cached, as for `bit_tf.data.train_pipeline`.
        start_batch: begin with this batch of the stream (a resumed run: the batches done).
        reduced_scale_decoding: decode a JPEG of a folder at a reduced scale where the
            smallest crop keeps `crop` pixels a side (`decode_size`), as
            `bit_tf.data.train_pipeline` can; False (the default) decodes every image whole.

    Returns:
        A `tf.data.Dataset` of (images float32 (batch, crop, crop, 3) in [0, 1], one-hot
        labels float32 (batch, num_classes), mixed like the images).

    Example:
        >>> batches = consistent_batches(train, batch_size=512, crop=128, seed=0)
    """
    _check_settings(batch_size, crop, min_crop_area, mixup_alpha)
    seed, records, decode = training_records(source, batch_size, seed, cache, start_batch)
    smallest_side = decode_size(crop, min_crop_area) if reduced_scale_decoding else 0

    def augment(position, record, label):
        image, decoded = decode(record, smallest_side)
        pair = example_seed(seed, position)
        image = inception_crop(image, crop, pair, min_crop_area)
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=pair[::-1])
        return image, tf.one_hot(label, source.num_classes, dtype=tf.float32), decoded

    dataset = records.map(augment, num_parallel_calls=AUTOTUNE)
    dataset = dataset.filter(lambda image, label, decoded: decoded)
    dataset = dataset.map(lambda image, label, decoded: (image, label))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if mixup_alpha:
        dataset = mix_batches(dataset, mixup_alpha, seed=seed, start_batch=start_batch)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())


def _check_settings(batch_size: int, crop: int, min_crop_area: float, mixup_alpha: float) -> None:
    """Raises ValueError naming the first setting of `consistent_batches` that cannot work."""
    for name, value in (("batch_size", batch_size), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not 0.0 < min_crop_area <= 1.0:
        raise ValueError(f"min_crop_area must be in (0, 1], got {min_crop_area!r}.")
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must not be negative, got {mixup_alpha!r}.")
