"""BiT's GroupNorm(+ReLU) for the JAX backend, with the closed-form gradient.

`keras.layers.GroupNormalization` reshapes [batch, height, width, channels] to
[batch, height, width, groups, channels / groups] and takes moments over three of the five
axes, which XLA cannot do as one contiguous reduction; its gradient is whatever autodiff
makes of that, and it keeps a float32 copy of the activation for the backward pass.

Here the statistics are two "column" reductions over the pixels (per example and channel,
then summed over each group's channels, a tiny step), the ReLU is applied in the same pass,
and a `jax.custom_vjp` gives the closed-form backward pass, which keeps only the input and
the output in the compute dtype plus the [batch, groups] mean and 1/std. The math is that of
`bit_tf.fused` (TensorFlow); results match the Keras layer to float32 round-off.

Example:
    >>> import jax.numpy as jnp
    >>> from bit_tf import fused_jax
    >>> x = jnp.ones((2, 8, 8, 64))
    >>> y = fused_jax.group_norm(x, jnp.ones(64), jnp.zeros(64), groups=32, epsilon=1e-5)
    >>> y.shape
    (2, 8, 8, 64)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _statistics(x3, groups: int, epsilon: float):
    """Mean and 1/sqrt(variance + epsilon), [batch, groups, 1] each, of x3 = [batch, pixels, C]
    in float32, two passes (mean, then mean squared deviation) as the reference code does."""
    batch, pixels, channels = x3.shape
    per_group = channels // groups
    count = pixels * per_group
    sums = jnp.sum(x3, axis=1).reshape(batch, groups, per_group)
    mean = jnp.sum(sums, axis=2, keepdims=True) / count
    deviations = x3 - _per_channel(mean, per_group)
    squares = jnp.sum(jnp.square(deviations), axis=1).reshape(batch, groups, per_group)
    variance = jnp.sum(squares, axis=2, keepdims=True) / count
    return mean, jax.lax.rsqrt(variance + epsilon)


def _per_channel(values, per_group: int):
    """[batch, groups, 1 or per_group] -> [batch, 1, channels], to broadcast over pixels."""
    batch, groups, _ = values.shape
    return jnp.broadcast_to(values, (batch, groups, per_group)).reshape(batch, 1, -1)


def _forward(x, gamma, beta, groups: int, epsilon: float, relu: bool):
    batch, channels = x.shape[0], x.shape[-1]
    per_group = channels // groups
    x3 = x.reshape(batch, -1, channels).astype(jnp.float32)
    mean, inverse = _statistics(x3, groups, epsilon)
    scale = inverse * gamma.astype(jnp.float32).reshape(1, groups, per_group)
    offset = beta.astype(jnp.float32).reshape(1, groups, per_group) - mean * scale
    y = x3 * _per_channel(scale, per_group) + _per_channel(offset, per_group)
    if relu:
        y = jnp.maximum(y, 0.0)
    return y.astype(x.dtype).reshape(x.shape), mean, inverse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _group_norm(x, gamma, beta, groups, epsilon, relu):
    return _forward(x, gamma, beta, groups, epsilon, relu)[0]


def _group_norm_forward(x, gamma, beta, groups, epsilon, relu):
    y, mean, inverse = _forward(x, gamma, beta, groups, epsilon, relu)
    return y, (x, y if relu else None, gamma, beta, mean, inverse)


def _group_norm_backward(groups, epsilon, relu, residuals, upstream):
    x, y, gamma, beta, mean, inverse = residuals
    batch, channels = x.shape[0], x.shape[-1]
    per_group = channels // groups
    x3 = x.reshape(batch, -1, channels).astype(jnp.float32)
    dz = upstream.reshape(batch, -1, channels).astype(jnp.float32)
    if relu:
        dz = jnp.where(y.reshape(batch, -1, channels) > 0, dz, 0.0)
    count = x3.shape[1] * per_group
    sum_dz = jnp.sum(dz, axis=1).reshape(batch, groups, per_group)
    sum_dz_x = jnp.sum(dz * x3, axis=1).reshape(batch, groups, per_group)
    sum_dz_xhat = (sum_dz_x - mean * sum_dz) * inverse  # sum over pixels of dz * x_hat
    gamma3 = gamma.astype(jnp.float32).reshape(1, groups, per_group)
    d_beta = jnp.sum(sum_dz, axis=0).reshape(channels).astype(beta.dtype)
    d_gamma = jnp.sum(sum_dz_xhat, axis=0).reshape(channels).astype(gamma.dtype)
    mean_dxhat = jnp.sum(gamma3 * sum_dz, axis=2, keepdims=True) / count
    mean_dxhat_xhat = jnp.sum(gamma3 * sum_dz_xhat, axis=2, keepdims=True) / count
    # dx = inverse * (gamma * dz - mean_dxhat - x_hat * mean_dxhat_xhat), as a * dz + b * x + c
    a = _per_channel(inverse * gamma3, per_group)
    b = _per_channel(-inverse * inverse * mean_dxhat_xhat, per_group)
    c = _per_channel(inverse * (mean * inverse * mean_dxhat_xhat - mean_dxhat), per_group)
    dx = dz * a + x3 * b + c
    return dx.astype(x.dtype).reshape(x.shape), d_gamma, d_beta


_group_norm.defvjp(_group_norm_forward, _group_norm_backward)


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the last axis of an NHWC tensor (then ReLU if `relu`), in x's dtype.

    Statistics are computed in float32; `gamma` and `beta` have one value per channel.

    Example:
        >>> x = jnp.arange(2 * 4 * 4 * 64, dtype=jnp.float32).reshape(2, 4, 4, 64)
        >>> y = group_norm(x, jnp.ones(64), jnp.zeros(64), groups=32, epsilon=1e-5, relu=True)
        >>> bool(y.min() >= 0)
        True
    """
    if x.ndim != 4 or x.shape[-1] % groups:
        raise ValueError(
            f"group_norm needs [batch, height, width, channels] with channels divisible by "
            f"groups={groups}; got shape {tuple(x.shape)}"
        )
    return _group_norm(x, gamma, beta, groups, float(epsilon), bool(relu))
