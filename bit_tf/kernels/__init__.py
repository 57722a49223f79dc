"""The one seam for speed: BiT's GroupNorm(+ReLU), weight standardization and convolutions.

The layers of `bit_tf.models.layers` call these functions and nothing else for their math; which
implementation runs is chosen here, by the Keras backend, the settings and what the graph
being traced is for:

- `reference`: the operations written plainly in keras.ops, the definition the others match;
  it runs where the `fused` setting is off, on other backends, and in trainable exports.
- `tensorflow`: on TensorFlow, XLA-compiled closed-form kernels; on CPUs in training and local
  inference the C++ kernels (`native`) and recomputation (`recompute`); matrix-product
  convolutions on few pixels (`matmul`).
- `jax`: on JAX, GroupNorm with its closed-form gradient.

The switches are one `KernelSettings` object (`settings`, `configure`, `configured`), each with
its environment variable (`bit_tf.kernels.settings` module). Every implementation is tested
against the reference (tests/kernels/test_kernels.py).

Example:
    >>> import numpy as np
    >>> from bit_tf import kernels
    >>> x = np.random.rand(2, 8, 8, 64).astype("float32")
    >>> y = kernels.group_norm(x, np.ones(64, "float32"), np.zeros(64, "float32"), groups=32,
    ...                        epsilon=1e-5, relu=True)
    >>> with kernels.configured(fused=False):  # the keras.ops reference
    ...     same = kernels.group_norm(x, np.ones(64, "float32"), np.zeros(64, "float32"),
    ...                               groups=32, epsilon=1e-5, relu=True)
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras
from keras import ops

from bit_tf.kernels import (  # noqa: F401 (onednn: loaded first by bit_tf/__init__.py, bound here)
    onednn,
    reference,
)
from bit_tf.kernels.purpose import TRAINABLE_EXPORT, exporting, local_inference, purpose
from bit_tf.kernels.settings import KernelSettings, configure, configured, settings

# The module of fused kernels of each backend that has one.
_BACKEND_MODULES = {"tensorflow": "bit_tf.kernels.tensorflow", "jax": "bit_tf.kernels.jax"}


def implementation() -> ModuleType:
    """The module whose functions run now: `reference`, `tensorflow` or `jax`.

    Example:
        >>> with configured(fused=False):
        ...     implementation().__name__
        'bit_tf.kernels.reference'
    """
    name = _BACKEND_MODULES.get(keras.backend.backend())
    if name is None or not settings().fused or purpose() == TRAINABLE_EXPORT:
        return reference
    return importlib.import_module(name)


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the channels of an NHWC tensor (channels divisible by `groups`), then
    ReLU if `relu`; the result has x's dtype, the statistics are float32.

    Example:
        >>> group_norm(np.ones((1, 4, 4, 32), "float32"), np.ones(32, "float32"),
        ...            np.zeros(32, "float32"), groups=32, epsilon=1e-5).shape
        (1, 4, 4, 32)
    """
    x = ops.convert_to_tensor(x)
    if len(x.shape) != 4 or x.shape[-1] is None or x.shape[-1] % groups:
        raise ValueError(
            f"group_norm needs [batch, height, width, channels] with channels divisible by "
            f"groups={groups}; got shape {tuple(x.shape)}."
        )
    gamma, beta = ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta)
    return implementation().group_norm(x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu)


def standardize_kernel(kernel, *, epsilon: float):
    """Weight standardization: each output channel of `kernel` (its last axis) to mean 0 and
    variance 1 over the other axes, in float32.

    Example:
        >>> standardize_kernel(np.random.rand(3, 3, 4, 8), epsilon=1e-10).shape
        (3, 3, 4, 8)
    """
    return implementation().standardize_kernel(kernel, epsilon=epsilon)


def convolution(inputs, kernel, *, strides: int = 1, padding: str = "valid"):
    """A channels-last 2-D convolution with equal strides, "same" or "valid" padding.

    Example:
        >>> convolution(np.ones((1, 4, 4, 3), "float32"), np.ones((1, 1, 3, 8), "float32")).shape
        (1, 4, 4, 8)
    """
    return implementation().convolution(inputs, kernel, strides=strides, padding=padding)


def standardized_convolution(
    inputs, kernel, *, epsilon: float, strides: int = 1, padding: str = "valid"
):
    """`convolution(inputs, standardize_kernel(kernel))`, as one operation so that an
    implementation may keep less for the backward pass.

    Example:
        >>> standardized_convolution(np.ones((1, 4, 4, 3), "float32"),
        ...                          np.random.rand(1, 1, 3, 8).astype("float32"),
        ...                          epsilon=1e-10).shape
        (1, 4, 4, 8)
    """
    return implementation().standardized_convolution(
        inputs, kernel, epsilon=epsilon, strides=strides, padding=padding
    )


__all__ = [
    "KernelSettings",
    "configure",
    "configured",
    "convolution",
    "exporting",
    "group_norm",
    "implementation",
    "local_inference",
    "purpose",
    "settings",
    "standardize_kernel",
    "standardized_convolution",
]
