"""BiT's GroupNorm(+ReLU) and weight standardization as a forward and a closed-form backward.

The fused kernels of the TensorFlow and JAX backends run these functions (XLA-compiled): each
forward returns the statistics its backward needs, so the backward makes no second pass to
find them, and keeps only the input and output rather than every intermediate of autodiff.
Statistics are reduced over pixels first ("column" sums XLA turns into one pass), then over the
few channels of each group, in float32 with two passes (mean, then squared deviation).

Shapes: `x` [batch, height, width, channels]; the statistics of GroupNorm are
[batch, groups, 1]; those of a kernel [1, out_channels].

Example:
    >>> import numpy as np
    >>> from bit_tf.kernels import closed_form
    >>> x = np.random.rand(2, 4, 4, 64).astype("float32")
    >>> y, mean, inverse = closed_form.group_norm_forward(
    ...     x, np.ones(64), np.zeros(64), groups=32, epsilon=1e-5, relu=True)
    >>> dx, d_gamma, d_beta = closed_form.group_norm_backward(
    ...     np.ones_like(x), x, y, np.ones(64), mean, inverse, groups=32, relu=True)
"""

from __future__ import annotations

from keras import ops


def _columns(x, channels: int):
    """[batch, height, width, channels] -> [batch, pixels, channels] in float32."""
    return ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1, channels))


def _per_channel(values, per_group: int):
    """[batch, groups, 1 or per_group] -> [batch, 1, channels], to broadcast over pixels."""
    if values.shape[-1] == 1:
        values = ops.repeat(values, per_group, axis=2)
    return ops.reshape(values, (-1, 1, values.shape[1] * per_group))


def _group_sums(columns, groups: int):
    """Sums over pixels, per example and channel: [batch, groups, channels per group]."""
    return ops.reshape(ops.sum(columns, axis=1), (-1, groups, columns.shape[-1] // groups))


def _count(columns, per_group: int):
    return ops.cast(ops.shape(columns)[1], "float32") * per_group


def group_norm_forward(x, gamma, beta, *, groups: int, epsilon: float, relu: bool):
    """GroupNorm (then ReLU if `relu`) of x: returns (y in x's dtype, mean, 1/std).

    Example:
        >>> y, mean, inverse = group_norm_forward(np.ones((1, 2, 2, 32)), np.ones(32),
        ...     np.zeros(32), groups=32, epsilon=1e-5, relu=False)
        >>> tuple(mean.shape)
        (1, 32, 1)
    """
    channels = x.shape[-1]
    per_group = channels // groups
    columns = _columns(x, channels)
    count = _count(columns, per_group)
    mean = ops.sum(_group_sums(columns, groups), axis=2, keepdims=True) / count
    deviations = ops.square(columns - _per_channel(mean, per_group))
    variance = ops.sum(_group_sums(deviations, groups), axis=2, keepdims=True) / count
    inverse = ops.rsqrt(variance + epsilon)
    scale = inverse * ops.reshape(ops.cast(gamma, "float32"), (1, groups, per_group))
    offset = ops.reshape(ops.cast(beta, "float32"), (1, groups, per_group)) - mean * scale
    y = columns * _per_channel(scale, per_group) + _per_channel(offset, per_group)
    if relu:
        y = ops.relu(y)
    return ops.reshape(ops.cast(y, x.dtype), ops.shape(x)), mean, inverse


def group_norm_backward(upstream, x, y, gamma, mean, inverse, *, groups: int, relu: bool):
    """The gradients (dx, d_gamma, d_beta) of `group_norm_forward` from its saved statistics.

    dx = 1/std * (gamma * dz - mean(gamma * dz) - x_hat * mean(gamma * dz * x_hat)) per group,
    with dz the upstream gradient masked by the ReLU; computed as a * dz + b * x + c.

    Example:
        >>> x = np.random.rand(1, 2, 2, 32).astype("float32")
        >>> y, mean, inverse = group_norm_forward(x, np.ones(32), np.zeros(32), groups=32,
        ...                                       epsilon=1e-5, relu=False)
        >>> dx, _, _ = group_norm_backward(np.ones_like(x), x, y, np.ones(32), mean, inverse,
        ...                                groups=32, relu=False)
    """
    channels = x.shape[-1]
    per_group = channels // groups
    columns = _columns(x, channels)
    dz = _columns(upstream, channels)
    if relu:
        dz = ops.where(_columns(y, channels) > 0, dz, ops.zeros_like(dz))
    count = _count(columns, per_group)
    sum_dz = _group_sums(dz, groups)
    sum_dz_xhat = (_group_sums(dz * columns, groups) - mean * sum_dz) * inverse
    gamma = ops.reshape(ops.cast(gamma, "float32"), (1, groups, per_group))
    d_beta = ops.reshape(ops.sum(sum_dz, axis=0), (channels,))
    d_gamma = ops.reshape(ops.sum(sum_dz_xhat, axis=0), (channels,))
    mean_dxhat = ops.sum(gamma * sum_dz, axis=2, keepdims=True) / count
    mean_dxhat_xhat = ops.sum(gamma * sum_dz_xhat, axis=2, keepdims=True) / count
    a = _per_channel(inverse * gamma, per_group)
    b = _per_channel(-inverse * inverse * mean_dxhat_xhat, per_group)
    c = _per_channel(inverse * (mean * inverse * mean_dxhat_xhat - mean_dxhat), per_group)
    dx = dz * a + columns * b + c
    return ops.reshape(ops.cast(dx, x.dtype), ops.shape(x)), d_gamma, d_beta


def standardize_forward(kernel, *, epsilon: float):
    """Weight standardization of a float32 kernel: returns (standardized, mean, 1/std).

    Example:
        >>> standardized, mean, inverse = standardize_forward(np.random.rand(3, 3, 4, 8),
        ...                                                   epsilon=1e-10)
    """
    columns = ops.reshape(kernel, (-1, kernel.shape[-1]))
    mean = ops.mean(columns, axis=0, keepdims=True)
    variance = ops.mean(ops.square(columns - mean), axis=0, keepdims=True)
    inverse = ops.rsqrt(variance + epsilon)
    return ops.reshape((columns - mean) * inverse, kernel.shape), mean, inverse


def standardize_backward(upstream, kernel, mean, inverse):
    """The gradient of `standardize_forward` from its saved per-channel mean and 1/std.

    Example:
        >>> kernel = np.random.rand(1, 1, 4, 8).astype("float32")
        >>> _, mean, inverse = standardize_forward(kernel, epsilon=1e-10)
        >>> standardize_backward(np.ones_like(kernel), kernel, mean, inverse).shape
        (1, 1, 4, 8)
    """
    columns = ops.reshape(kernel, (-1, kernel.shape[-1]))
    d_columns = ops.reshape(upstream, (-1, kernel.shape[-1]))
    standardized = (columns - mean) * inverse
    mean_d = ops.mean(d_columns, axis=0, keepdims=True)
    mean_d_standardized = ops.mean(d_columns * standardized, axis=0, keepdims=True)
    d_kernel = (d_columns - mean_d - standardized * mean_d_standardized) * inverse
    return ops.reshape(d_kernel, kernel.shape)
