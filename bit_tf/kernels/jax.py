"""BiT's kernels on the JAX backend: GroupNorm(+ReLU) with its closed-form gradient.

`keras.layers.GroupNormalization` takes moments over three of five axes of a reshaped tensor,
which XLA cannot do as one contiguous reduction, and autodiff keeps a float32 copy of the
activation for the backward pass. Here GroupNorm runs `bit_tf.kernels.closed_form` under a
`jax.custom_vjp`, which keeps only the input, the output (for the ReLU) and the [batch, groups]
statistics. Weight standardization and the convolutions are the keras.ops reference: JAX
compiles the whole step with XLA, which fuses them already.

Example:
    >>> import jax.numpy as jnp
    >>> from bit_tf.kernels import jax as jax_kernels
    >>> y = jax_kernels.group_norm(jnp.ones((2, 8, 8, 64)), jnp.ones(64), jnp.zeros(64),
    ...                            groups=32, epsilon=1e-5, relu=True)
"""

from __future__ import annotations

import functools

import jax

from bit_tf.kernels import closed_form, reference

standardize_kernel = reference.standardize_kernel
convolution = reference.convolution
standardized_convolution = reference.standardized_convolution


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _group_norm(x, gamma, beta, groups, epsilon, relu):
    return closed_form.group_norm_forward(
        x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu
    )[0]


def _group_norm_forward(x, gamma, beta, groups, epsilon, relu):
    y, mean, inverse = closed_form.group_norm_forward(
        x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu
    )
    return y, (x, y if relu else None, gamma, beta, mean, inverse)


def _group_norm_backward(groups, epsilon, relu, residuals, upstream):
    x, y, gamma, beta, mean, inverse = residuals
    dx, d_gamma, d_beta = closed_form.group_norm_backward(
        upstream, x, y, gamma, mean, inverse, groups=groups, relu=relu
    )
    return dx, d_gamma.astype(gamma.dtype), d_beta.astype(beta.dtype)


_group_norm.defvjp(_group_norm_forward, _group_norm_backward)


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the last axis of an NHWC array (then ReLU if `relu`), in x's dtype.

    Example:
        >>> x = jnp.arange(2 * 4 * 4 * 64, dtype=jnp.float32).reshape(2, 4, 4, 64)
        >>> y = group_norm(x, jnp.ones(64), jnp.zeros(64), groups=32, epsilon=1e-5, relu=True)
        >>> bool(y.min() >= 0)
        True
    """
    gamma, beta = jax.numpy.asarray(gamma), jax.numpy.asarray(beta)
    return _group_norm(x, gamma, beta, int(groups), float(epsilon), bool(relu))
