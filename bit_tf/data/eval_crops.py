"""Evaluation crops as big_vision's distillation evaluates: resize the shorter side, then take
the central square.

big_vision evaluates its distilled students (and their teachers) with
`resize_small(160)|central_crop(128)` on Flowers, Pet, Food and SUN and
`resize_small(256)|central_crop(224)` on ImageNet (`configs/proj/distill/bigsweep_flowers_pet.py`
L88, `bigsweep_food_sun.py` L83, `bit_i1k.py` L74). `resize_small` scales the image so that its
shorter side has the given size, keeping the aspect ratio, with area interpolation and no
anti-aliasing (`big_vision/pp/ops_image.py` L93-131); `central_crop` takes the square at offset
`((height - crop) // 2, (width - crop) // 2)` (L266-292). The authors' BiT fine-tuning code instead
resizes straight to the crop (`bit_tf.data.eval_pipeline`'s default).

Example:
    >>> from bit_tf.data.eval_crops import eval_short_side, short_side_central_crop
    >>> eval_short_side(128), eval_short_side(224), eval_short_side(384)
    (160, 256, 439)
    >>> short_side_central_crop(tf.zeros((300, 200, 3)), 160, 128).shape
    TensorShape([128, 128, 3])
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["CONFIG_SHORT_SIDES", "EVAL_RESIZES", "eval_short_side", "short_side_central_crop"]

#: The crop -> shorter side pairs of big_vision's distillation configs.
CONFIG_SHORT_SIDES = {128: 160, 224: 256}
#: How evaluation images are brought to the crop: "resize" straight (the authors' BiT code),
#: or "short_side_crop" (big_vision's distillation).
EVAL_RESIZES = ("resize", "short_side_crop")


def eval_short_side(crop: int) -> int:
    """The shorter side to resize to before a central `crop`: the configs' pair for 128 and
    224, else round(crop * 8 / 7) (bit-tf's rule, the ratio of the ImageNet pair).

    Example:
        >>> eval_short_side(480)
        549
    """
    return CONFIG_SHORT_SIDES.get(int(crop), round(crop * 8 / 7))


def short_side_central_crop(image: tf.Tensor, short_side: int, crop: int) -> tf.Tensor:
    """`image` (H, W, 3) scaled so its shorter side is `short_side` (area interpolation, as
    big_vision's `resize_small`), then its central `crop` x `crop` square.

    Raises:
        ValueError: a `crop` larger than `short_side`.

    Example:
        >>> short_side_central_crop(tf.zeros((64, 32, 3)), 32, 32).shape
        TensorShape([32, 32, 3])
    """
    if crop > short_side:
        raise ValueError(f"crop ({crop}) must not be larger than short_side ({short_side}).")
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    factor = short_side / tf.minimum(height, width)
    new_height = tf.maximum(crop, tf.cast(tf.round(height * factor), tf.int32))
    new_width = tf.maximum(crop, tf.cast(tf.round(width * factor), tf.int32))
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method="area")
    top, left = (new_height - crop) // 2, (new_width - crop) // 2
    return tf.ensure_shape(image[top : top + crop, left : left + crop], (crop, crop, 3))
