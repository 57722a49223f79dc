"""Images on the scale BiT models expect: floats in [0, 1]; 8- and 16-bit pixels converted.

BiT models take float images in [0, 1] (the TF-Hub convention) and rescale them to [-1, 1]
themselves. Images as decoders and `numpy.asarray(PIL.Image)` give them are integers, and a
float copy of those is in 0-255: fed as they are, both give wrong features without any error.
So, everywhere an image enters a bit_tf model (`BitModel` calls and `predict`, `HubLayer`, the
exported hub modules and serving signatures):

- `uint8` images are divided by 255 and `uint16` images by 65535, as `bit_tf.data` reads
  arrays; images of other integer dtypes are refused (their scale is anyone's guess).
  The dtype is known when a graph is traced, so this holds in compiled graphs too.
- float images whose largest value is above `MAX_UNIT_VALUE` (1.5) are refused with a
  `ValueError` naming that value, where the values are at hand without extra work: eager calls
  and `predict` on arrays. Inside compiled graphs (`tf.function`, `jit_compile`, `jax.jit`,
  `fit`, a loaded SavedModel) nothing is checked: a check there would stop the accelerator for
  every batch.

Example:
    >>> import numpy as np
    >>> from bit_tf.models import input_scale
    >>> input_scale.to_unit_scale(np.full((1, 2, 2, 3), 255, np.uint8)).max()
    1.0
    >>> input_scale.check_unit_scale(np.full((1, 2, 2, 3), 255.0), "model 'bit'")
    Traceback (most recent call last):
    ValueError: model 'bit' takes float images in [0, 1], but the largest value here is 255 ...
"""

from __future__ import annotations

import keras
import numpy as np

#: Float images with a larger value are taken to be in 0-255 and refused where checked.
MAX_UNIT_VALUE = 1.5
#: The integer dtypes read as pixel values, and the value that stands for full intensity.
INTEGER_SCALES = {"uint8": 255.0, "uint16": 65535.0}


def _dtype(images) -> str | None:
    dtype = getattr(images, "dtype", None)
    return None if dtype is None else keras.backend.standardize_dtype(dtype)


def _is_float(dtype: str) -> bool:
    return "float" in dtype


def integer_scale(dtype: str, where: str = "images") -> float | None:
    """The value full intensity has in images of `dtype` (255 for uint8, 65535 for uint16);
    None for floats.

    Raises:
        ValueError: another integer dtype (or bool), naming it.

    Example:
        >>> integer_scale("uint8"), integer_scale("float32")
        (255.0, None)
    """
    dtype = keras.backend.standardize_dtype(dtype)
    if _is_float(dtype):
        return None
    if dtype not in INTEGER_SCALES:
        raise ValueError(
            f"{where} takes float images in [0, 1], uint8 (0-255) or uint16 (0-65535) pixels, "
            f"got dtype {dtype}. Convert the images to float in [0, 1] first."
        )
    return INTEGER_SCALES[dtype]


def to_unit_scale(images, dtype: str = "float32", where: str = "images"):
    """`images` with uint8 / uint16 pixels divided by 255 / 65535, as `dtype`; floats as given.

    Works on NumPy arrays, backend tensors and symbolic tensors alike (keras.ops).

    Raises:
        ValueError: images of another integer dtype, naming it.

    Example:
        >>> to_unit_scale(np.array([[0, 51, 255]], np.uint8))
        array([[0. , 0.2, 1. ]], dtype=float32)
    """
    source = _dtype(images)
    if source is None:
        return images
    scale = integer_scale(source, where)
    if scale is None:
        return images
    if isinstance(images, np.ndarray):
        return (images.astype(dtype) / np.asarray(scale, dtype)).astype(dtype)
    return keras.ops.divide(keras.ops.cast(images, dtype), keras.ops.cast(scale, dtype))


def values_at_hand(images) -> bool:
    """Whether `images` holds values now (a NumPy array, an eager tensor), not a traced or
    symbolic tensor of a graph being built (`tf.function`, `jax.jit`, a Keras functional
    graph)."""
    if isinstance(images, np.ndarray):
        return True
    if not keras.ops.is_tensor(images):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(images, jax.core.Tracer)
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return False


def check_unit_scale(images, where: str) -> None:
    """Refuses float images that are clearly on the 0-255 scale, where the values are at hand.

    Float images whose largest value is above `MAX_UNIT_VALUE` raise a `ValueError` naming it;
    integer images, symbolic and traced tensors (compiled graphs) pass unchecked.

    Args:
        images: a NumPy array or a backend tensor.
        where: what takes the images, for the message (e.g. "model 'bit_r50x1'").

    Raises:
        ValueError: the largest value is above `MAX_UNIT_VALUE`.

    Example:
        >>> check_unit_scale(np.ones((1, 8, 8, 3), "float32"), "model 'bit'")  # fine
    """
    dtype = _dtype(images)
    if dtype is None or not _is_float(dtype) or not values_at_hand(images):
        return
    if isinstance(images, np.ndarray):
        if images.size == 0:
            return
        largest = float(np.max(images))
    else:
        if int(np.prod(keras.ops.shape(images))) == 0:
            return
        largest = float(keras.ops.convert_to_numpy(keras.ops.max(images)))
    if largest > MAX_UNIT_VALUE:
        raise ValueError(
            f"{where} takes float images in [0, 1], but the largest value here is {largest:g}: "
            "these look like pixel values in 0-255. Divide them by 255 first, or pass uint8 "
            "images, which are divided by 255 for you."
        )


def check_call_arguments(args: tuple, kwargs: dict, where: str) -> None:
    """The checks for a layer's `__call__(images, training=None, ...)`: the dtype always (also
    while a graph is traced), the float scale in eager inference calls (not with
    `training=True`, as in `fit`).

    Layers run them in `__call__` rather than `call`, whose errors Keras prints together with
    the whole input.

    Example:
        >>> check_call_arguments((np.zeros((1, 8, 8, 3), "int32"),), {}, "model 'bit'")
        Traceback (most recent call last):
        ValueError: model 'bit' takes float images in [0, 1], uint8 (0-255) or uint16 ...
    """
    if not args or isinstance(args[0], (list, tuple, dict)):
        return
    dtype = _dtype(args[0])
    if dtype is not None:
        integer_scale(dtype, where)
    if not kwargs.get("training", args[1] if len(args) > 1 else None):
        check_unit_scale(args[0], where)
