"""BiT's kernels on the TensorFlow backend: XLA-compiled closed forms, C++ kernels, matrix products.

TensorFlow would run GroupNorm and weight standardization as a dozen separate ops each, every
one a full pass over memory. Here each is one XLA-compiled forward and one XLA-compiled
closed-form backward (`bit_tf.kernels.closed_form`) under a `tf.custom_gradient`, while the
convolutions stay on TensorFlow's oneDNN kernels, or become matrix products where they have
very few output pixels (`bit_tf.kernels.matmul`).

On a CPU (no GPU visible), where a gradient tape records (training) or the caller declared
`local_inference()`, and outside XLA compilation, the C++ kernels of `bit_tf.kernels.native`
take the place of the XLA ones, and a training step recomputes pre-activations in its backward
pass (`bit_tf.kernels.recompute`). Graphs declared `exporting(...)` hold standard ops only.

Example:
    >>> import tensorflow as tf
    >>> from bit_tf.kernels import tensorflow as tf_kernels
    >>> x = tf.random.normal([2, 8, 8, 64])
    >>> y = tf_kernels.group_norm(x, tf.ones([64]), tf.zeros([64]), groups=32, epsilon=1e-5,
    ...                           relu=True)
"""

from __future__ import annotations

import functools
import logging

import tensorflow as tf

from bit_tf.kernels import closed_form, matmul, native, recompute, reference
from bit_tf.kernels.purpose import EXPORT, LOCAL_INFERENCE, TRAINABLE_EXPORT, purpose
from bit_tf.kernels.settings import settings

try:  # TensorFlow internals; without them the C++ kernels stay off
    from tensorflow.python.eager import record as _tape_record
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - depends on the TensorFlow version
    _tape_record = _control_flow_util = None

# The input dtypes of the C++ GroupNorm (it computes in float32); kernels are float32.
NATIVE_DTYPES = (tf.float32, tf.bfloat16)


class _QuietRetracing(logging.Filter):
    """Drops TensorFlow's "frequent retracing" warning about the compiled kernels here: each
    outer graph traces them again for its own shapes, which is expected and cheap."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("retracing" in message and "_compiled_" in message)


tf.get_logger().addFilter(_QuietRetracing())


@functools.cache
def _sees_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def native_operations(dtype="float32"):
    """The C++ kernels' ops where they may serve what is traced now, else None.

    They serve float32 (and bfloat16 GroupNorm inputs) on a TensorFlow without GPUs, outside
    XLA compilation, where a gradient tape records or `local_inference()` was declared, and
    where the `native` setting is on and the library builds.

    Example:
        >>> native_operations() is None  # no tape records here
        True
    """
    if not settings().native or _tape_record is None or tf.as_dtype(dtype) not in NATIVE_DTYPES:
        return None
    declared = purpose()
    if declared in (EXPORT, TRAINABLE_EXPORT) or _sees_gpu():
        return None
    if not (declared == LOCAL_INFERENCE or _tape_record.could_possibly_record()):
        return None
    if _control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return None
    return native.library()


def _recomputes() -> bool:
    """Whether pre-activations are recomputed in what is traced now: the setting is on, and a
    gradient tape records into a graph (training; predict has no backward pass to save for)."""
    return (
        settings().recompute
        and not tf.executing_eagerly()
        and _tape_record is not None
        and _tape_record.could_possibly_record()
    )


@functools.cache
def _compiled_group_norm(groups: int, epsilon: float, relu: bool, channels: int):
    """The XLA-compiled forward and backward of GroupNorm(+ReLU) for one setting (and one
    channel count, so that each function sees only the few shapes of its layers)."""
    del channels

    @tf.function(jit_compile=True, autograph=False)
    def forward(x, gamma, beta):
        return closed_form.group_norm_forward(
            x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu
        )

    @tf.function(jit_compile=True, autograph=False)
    def backward(upstream, x, y, gamma, beta, mean, inverse):
        del beta
        return closed_form.group_norm_backward(
            upstream, x, y, gamma, mean, inverse, groups=groups, relu=relu
        )

    return forward, backward


def _native_group_norm(operations, groups: int, epsilon: float, relu: bool):
    def forward(x, gamma, beta):
        return operations.bit_group_norm(x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu)

    def backward(upstream, x, y, gamma, beta, mean, inverse):
        del y
        return operations.bit_group_norm_grad(
            upstream, x, gamma, beta, mean, inverse, groups=groups, relu=relu
        )

    return forward, backward


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the last axis of an NHWC tensor (then ReLU if `relu`), in one pass each
    way: the C++ kernels where they serve, else XLA-compiled closed forms.

    Example:
        >>> group_norm(tf.ones([1, 4, 4, 32]), tf.ones([32]), tf.zeros([32]), groups=32,
        ...            epsilon=1e-5).shape
        TensorShape([1, 4, 4, 32])
    """
    groups, epsilon, relu = int(groups), float(epsilon), bool(relu)
    # Tensors, not variables: a tf.function traces anew for every variable it is given.
    gamma = tf.cast(tf.convert_to_tensor(gamma), tf.float32)
    beta = tf.cast(tf.convert_to_tensor(beta), tf.float32)
    operations = native_operations(x.dtype)
    if operations is not None:
        forward, backward = _native_group_norm(operations, groups, epsilon, relu)
    else:
        forward, backward = _compiled_group_norm(groups, epsilon, relu, int(x.shape[-1]))
    if purpose() == EXPORT:  # a serving graph: nobody differentiates it
        return forward(x, gamma, beta)[0]

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        y, mean, inverse = forward(x, gamma, beta)

        def gradient(upstream):
            return backward(upstream, x, y, gamma, beta, mean, inverse)

        return y, gradient

    y = normalize(x, gamma, beta)
    if relu and operations is not None and _recomputes():
        activation = functools.partial(group_norm, groups=groups, epsilon=epsilon, relu=True)
        recompute.remember(y, activation, (x, gamma, beta))
    return y


@functools.cache
def _compiled_standardization(shape: tuple, epsilon: float):
    """The XLA-compiled forward and backward of weight standardization for one kernel shape."""

    @tf.function(jit_compile=True, autograph=False)
    def forward(kernel):
        return closed_form.standardize_forward(kernel, epsilon=epsilon)

    @tf.function(jit_compile=True, autograph=False)
    def backward(upstream, kernel, mean, inverse):
        return closed_form.standardize_backward(upstream, kernel, mean, inverse)

    return forward, backward


def standardize_kernel(kernel, *, epsilon: float):
    """Weight standardization of a [..., out_channels] kernel in float32, in one pass each way.

    Example:
        >>> standardize_kernel(tf.random.normal([3, 3, 16, 8]), epsilon=1e-10).shape
        TensorShape([3, 3, 16, 8])
    """
    kernel = tf.cast(tf.convert_to_tensor(kernel), tf.float32)
    operations = native_operations(tf.float32)
    if operations is not None:

        def forward(kernel):
            return operations.bit_standardize_kernel(kernel, epsilon=float(epsilon))

        backward = operations.bit_standardize_kernel_grad
    else:
        forward, backward = _compiled_standardization(tuple(kernel.shape.as_list()), float(epsilon))
    if purpose() == EXPORT:
        return forward(kernel)[0]

    @tf.custom_gradient
    def standardize(kernel):
        standardized, mean, inverse = forward(kernel)

        def gradient(upstream):
            return backward(upstream, kernel, mean, inverse)

        return standardized, gradient

    return standardize(kernel)


def convolution(inputs, kernel, *, strides: int, padding: str):
    """A channels-last convolution: a matrix product where `matmul.favours_matrix_product`
    says so, else TensorFlow's convolution.

    Example:
        >>> convolution(tf.ones([2, 4, 4, 8]), tf.ones([1, 1, 8, 3]), strides=1,
        ...             padding="valid").shape
        TensorShape([2, 4, 4, 3])
    """
    kernel = tf.cast(kernel, inputs.dtype)
    size = int(kernel.shape[0])
    if size == kernel.shape[1] and matmul.favours_matrix_product(
        size, strides, inputs.shape, padding
    ):
        return matmul.matrix_product_convolution(inputs, kernel, strides, padding)
    return reference.convolution(inputs, kernel, strides=strides, padding=padding)


def _output_pixels(input_shape, kernel_size: int, strides: int, padding: str) -> int | None:
    height, width = input_shape[1:3]
    if height is None or width is None:
        return None
    return matmul.output_size(height, kernel_size, strides, padding) * matmul.output_size(
        width, kernel_size, strides, padding
    )


def standardized_convolution(inputs, kernel, *, epsilon: float, strides: int, padding: str):
    """`convolution` with the standardized kernel; where `inputs` is a pre-activation that
    `recompute` remembers, with the pre-activation made again in the backward pass.

    Example:
        >>> standardized_convolution(tf.ones([1, 4, 4, 8]), tf.ones([3, 3, 8, 2]),
        ...                          epsilon=1e-10, strides=1, padding="same").shape
        TensorShape([1, 4, 4, 2])
    """
    standardize = functools.partial(standardize_kernel, epsilon=epsilon)
    convolve = functools.partial(convolution, strides=strides, padding=padding)
    source = recompute.source_of(inputs) if _recomputes() else None
    if source is not None and native_operations(tf.float32) is not None:
        return recompute.recomputed_convolution(
            source,
            inputs,
            tf.convert_to_tensor(kernel),
            standardize=standardize,
            convolve=convolve,
            recompute_kernel=recompute.recomputes_kernel(
                inputs.shape[0],
                _output_pixels(inputs.shape, int(kernel.shape[0]), strides, padding),
            ),
        )
    return convolve(inputs, standardize(kernel))
