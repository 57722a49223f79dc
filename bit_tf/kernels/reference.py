"""BiT's two operations written plainly in keras.ops: the definition every fast kernel matches.

Both compute their statistics in float32, with the variance taken without Bessel's correction,
as the authors' code does.

Example:
    >>> import numpy as np
    >>> from bit_tf.kernels import reference
    >>> x = np.random.rand(2, 4, 4, 64).astype("float32")
    >>> y = reference.group_norm(x, np.ones(64), np.zeros(64), groups=32, epsilon=1e-5)
    >>> w = reference.standardize_kernel(np.random.rand(3, 3, 8, 16), epsilon=1e-10)
"""

from __future__ import annotations

from keras import ops


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the channels (last axis) of an NHWC tensor, then ReLU if `relu`.

    Each example's channels are split into `groups` groups; each group is shifted to mean 0
    and scaled to variance 1 over its pixels and channels, then scaled by `gamma` and shifted
    by `beta` per channel. The result has x's dtype.

    Example:
        >>> group_norm(np.ones((1, 2, 2, 32)), np.ones(32), np.zeros(32), groups=32,
        ...            epsilon=1e-5).shape
        (1, 2, 2, 32)
    """
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    channels = x.shape[-1]
    grouped = ops.reshape(
        ops.cast(x, "float32"), (-1, *ops.shape(x)[1:3], groups, channels // groups)
    )
    mean = ops.mean(grouped, axis=(1, 2, 4), keepdims=True)
    variance = ops.mean(ops.square(grouped - mean), axis=(1, 2, 4), keepdims=True)
    normalized = ops.reshape((grouped - mean) * ops.rsqrt(variance + epsilon), ops.shape(x))
    y = normalized * ops.cast(gamma, "float32") + ops.cast(beta, "float32")
    if relu:
        y = ops.relu(y)
    return ops.cast(y, dtype)


def standardize_kernel(kernel, *, epsilon: float):
    """Weight standardization: each output channel (last axis) of a convolution kernel shifted
    to mean 0 and scaled to variance 1 over all other axes, in float32.

    Example:
        >>> standardize_kernel(np.random.rand(3, 3, 8, 16), epsilon=1e-10).shape
        (3, 3, 8, 16)
    """
    kernel = ops.cast(kernel, "float32")
    axes = tuple(range(len(kernel.shape) - 1))
    mean = ops.mean(kernel, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(kernel - mean), axis=axes, keepdims=True)
    return (kernel - mean) * ops.rsqrt(variance + epsilon)


def convolution(inputs, kernel, *, strides: int, padding: str):
    """A channels-last 2-D convolution with equal strides, "same" or "valid" padding.

    Example:
        >>> convolution(np.ones((1, 4, 4, 3)), np.ones((3, 3, 3, 8)), strides=1,
        ...             padding="same").shape
        (1, 4, 4, 8)
    """
    return ops.conv(inputs, ops.cast(kernel, inputs.dtype), strides=strides, padding=padding)


def standardized_convolution(inputs, kernel, *, epsilon: float, strides: int, padding: str):
    """`convolution` with the kernel standardized first (`standardize_kernel`).

    Example:
        >>> standardized_convolution(np.ones((1, 4, 4, 3)), np.random.rand(1, 1, 3, 8),
        ...                          epsilon=1e-10, strides=1, padding="valid").shape
        (1, 4, 4, 8)
    """
    standardized = standardize_kernel(kernel, epsilon=epsilon)
    return convolution(inputs, standardized, strides=strides, padding=padding)
