"""Fused TensorFlow kernels for BiT's GroupNorm(+ReLU) and weight standardization.

On the TensorFlow backend, TensorFlow runs `keras.layers.GroupNormalization` and the kernel
standardization as a dozen separate ops per layer (moments, broadcasts, and in the backward
pass `Tile`s and more reductions), each a full pass over memory. Profiling BiT-R50x1 at
128x128 showed these passes, not the convolutions, to be where this package lost to timm.

Here each of them is one XLA-compiled function for the forward pass and one for the backward
pass (a `tf.custom_gradient` with the closed-form gradient), so XLA fuses the elementwise work
into the reductions, while the convolutions stay on TensorFlow's oneDNN kernels. Statistics are
computed in float32 with two passes (mean, then the mean squared deviation), like the reference
code; results match the unfused layers to float32 round-off.

While a gradient tape records on the CPU (training), and in `BitModel.predict`'s step
(`native_inference`), GroupNorm and weight standardization run as native C++ kernels instead
where they can be built (`bit_tf.native`): the same formulas, with all passes over one example
or block of channels made while it is in cache.

The other Keras backends do not need this: JAX compiles the whole step with XLA anyway.

Example:
    >>> import tensorflow as tf
    >>> from bit_tf import fused
    >>> x = tf.random.normal([2, 8, 8, 64])
    >>> gamma, beta = tf.ones([64]), tf.zeros([64])
    >>> y = fused.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=True)
    >>> w = fused.standardize_kernel(tf.random.normal([3, 3, 64, 64]), epsilon=1e-10)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading

import keras
import tensorflow as tf

from bit_tf import native
from bit_tf.layers import output_size

try:  # TensorFlow internals; without them the native kernels stay off
    from tensorflow.python.eager import record as _tape_record
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - depends on the TensorFlow version
    _tape_record = _control_flow_util = None


class _QuietRetracing(logging.Filter):
    """Drops TensorFlow's "frequent retracing" warning about this module's functions.

    Each outer graph (a model's predict or train step) traces them again for its own shapes,
    which is expected and cheap; the warning would only alarm users.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("retracing" in message and "_functions.<locals>" in message)


tf.get_logger().addFilter(_QuietRetracing())


def available(dtype="float32") -> bool:
    """Whether the fused kernels apply: the TensorFlow backend and a floating-point dtype.

    Example:
        >>> available("float32")  # True under KERAS_BACKEND=tensorflow
        True
    """
    return keras.backend.backend() == "tensorflow" and tf.as_dtype(dtype).is_floating


@functools.cache
def _sees_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


_INFERENCE = threading.local()

# The dtypes of inputs the native GroupNorm takes (it computes in float32 either way); weight
# standardization always runs on float32 kernels.
NATIVE_DTYPES = (tf.float32, tf.bfloat16)


@contextlib.contextmanager
def native_inference():
    """Lets the native kernels serve what is traced inside without a gradient tape too.

    `BitModel.predict` traces its step in here. Graphs traced inside hold the native ops, which
    load only where `bit_tf.native` is built, so exports must not be traced in here.

    Example:
        >>> with native_inference():
        ...     operations = native_operations()  # the ops where they build, else None
    """
    previous = getattr(_INFERENCE, "enabled", False)
    _INFERENCE.enabled = True
    try:
        yield
    finally:
        _INFERENCE.enabled = previous


def native_operations(dtype="float32"):
    """The native kernels' ops (`bit_tf.native`) where they apply to what is traced now, else None.

    They apply to float32 and bfloat16 while a gradient tape records (training), or inside
    `native_inference()`, outside XLA compilation, on a TensorFlow without GPUs (they are CPU
    kernels). Other inference traces and SavedModel exports keep the XLA kernels, which are
    standard TensorFlow ops.

    Example:
        >>> native_operations() is None  # no tape records here
        True
    """
    operations = _native_library(dtype)
    if operations is None:
        return None
    if not (_tape_record.could_possibly_record() or getattr(_INFERENCE, "enabled", False)):
        return None
    if _control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return None
    return operations


def native_kernels_available(dtype="float32") -> bool:
    """Whether the native kernels can serve `dtype` here: float32 (or bfloat16 GroupNorm
    inputs), turned on, built (or buildable) on this machine, and a TensorFlow without GPUs.

    Example:
        >>> native_kernels_available("float16")
        False
    """
    return _native_library(dtype) is not None


def _native_library(dtype):
    """`bit_tf.native.library()` where it can serve `dtype` here, else None."""
    if tf.as_dtype(dtype) not in NATIVE_DTYPES or not native.enabled() or _tape_record is None:
        return None
    return None if _sees_gpu() else native.library()


def _group_statistics(x3, groups: int, epsilon: float):
    """Mean and 1/sqrt(variance + epsilon) per (example, group) of x3 = [batch, pixels, C].

    Both reductions first sum over the pixels (contiguous "column" reductions that XLA turns
    into one pass), then over the channels of each group (small).
    """
    channels = x3.shape[-1]
    per_group = channels // groups
    batch = tf.shape(x3)[0]
    count = tf.cast(tf.shape(x3)[1] * per_group, tf.float32)
    sums = tf.reshape(tf.reduce_sum(x3, axis=1), [batch, groups, per_group])
    mean = tf.reduce_sum(sums, axis=2, keepdims=True) / count  # [batch, groups, 1]
    mean_per_channel = tf.reshape(tf.broadcast_to(mean, [batch, groups, per_group]), [batch, 1, -1])
    squares = tf.reduce_sum(tf.math.squared_difference(x3, mean_per_channel), axis=1)
    variance = tf.reduce_sum(tf.reshape(squares, [batch, groups, per_group]), axis=2, keepdims=True)
    return mean, tf.math.rsqrt(variance / count + epsilon)


def _per_channel(values, batch, groups: int, per_group: int):
    """[batch, groups, 1 or per_group] -> [batch, 1, channels], for broadcasting over pixels."""
    return tf.reshape(tf.broadcast_to(values, [batch, groups, per_group]), [batch, 1, -1])


@functools.cache
def _group_norm_functions(groups: int, epsilon: float, relu: bool, channels: int):
    """The compiled forward and backward of GroupNorm(+ReLU) for one setting.

    One pair per channel count as well, so that each function sees only the few input shapes
    of its layers (TensorFlow warns about functions that are retraced for many shapes).
    """

    @tf.function(jit_compile=True, autograph=False)
    def forward(x, gamma, beta):
        shape = tf.shape(x)
        x3 = tf.reshape(tf.cast(x, tf.float32), [shape[0], -1, x.shape[-1]])
        batch, per_group = shape[0], x.shape[-1] // groups
        mean, inverse = _group_statistics(x3, groups, epsilon)
        gamma = tf.reshape(gamma, [1, groups, per_group])
        scale = inverse * gamma  # [batch, groups, per_group]
        offset = tf.reshape(beta, [1, groups, per_group]) - mean * scale
        y = x3 * _per_channel(scale, batch, groups, per_group)
        y = y + _per_channel(offset, batch, groups, per_group)
        if relu:
            y = tf.nn.relu(y)
        return tf.cast(tf.reshape(y, shape), x.dtype), mean, inverse

    @tf.function(jit_compile=True, autograph=False)
    def backward(upstream, x, y, gamma, mean, inverse):
        """Reuses the forward pass's statistics ([batch, groups, 1] each) instead of two more
        passes over x."""
        shape = tf.shape(x)
        batch, channels = shape[0], x.shape[-1]
        per_group = channels // groups
        x3 = tf.reshape(tf.cast(x, tf.float32), [batch, -1, channels])
        dz = tf.reshape(tf.cast(upstream, tf.float32), [batch, -1, channels])
        if relu:
            dz = tf.where(tf.reshape(y, [batch, -1, channels]) > 0, dz, tf.zeros_like(dz))
        count = tf.cast(tf.shape(x3)[1] * per_group, tf.float32)
        sum_dz = tf.reshape(tf.reduce_sum(dz, axis=1), [batch, groups, per_group])
        sum_dz_x = tf.reshape(tf.reduce_sum(dz * x3, axis=1), [batch, groups, per_group])
        sum_dz_xhat = (sum_dz_x - mean * sum_dz) * inverse  # sum over pixels of dz * x_hat
        gamma = tf.reshape(gamma, [1, groups, per_group])
        d_beta = tf.reshape(tf.reduce_sum(sum_dz, axis=0), [channels])
        d_gamma = tf.reshape(tf.reduce_sum(sum_dz_xhat, axis=0), [channels])
        mean_dxhat = tf.reduce_sum(gamma * sum_dz, axis=2, keepdims=True) / count
        mean_dxhat_xhat = tf.reduce_sum(gamma * sum_dz_xhat, axis=2, keepdims=True) / count
        # dx = inverse * (gamma * dz - mean_dxhat - x_hat * mean_dxhat_xhat), as a * dz + b * x + c
        a = _per_channel(inverse * gamma, batch, groups, per_group)
        b = _per_channel(-inverse * inverse * mean_dxhat_xhat, batch, groups, per_group)
        c = inverse * (mean * inverse * mean_dxhat_xhat - mean_dxhat)
        dx = dz * a + x3 * b + _per_channel(c, batch, groups, per_group)
        return tf.cast(tf.reshape(dx, shape), x.dtype), d_gamma, d_beta

    return forward, backward


def group_norm(x, gamma, beta, *, groups: int, epsilon: float, relu: bool = False):
    """GroupNorm over the last axis of an NHWC tensor (then ReLU if asked), fused and compiled.

    Args:
        x: [batch, height, width, channels], channels divisible by `groups`.
        gamma, beta: [channels] scale and offset.
        groups: number of channel groups (BiT: 32).
        epsilon: added to the variance (BiT: 1e-5).
        relu: apply ReLU to the output (BiT's pre-activation), fused into the same pass.

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

        def forward(x, gamma, beta):
            return operations.bit_group_norm(
                x, gamma, beta, groups=groups, epsilon=epsilon, relu=relu
            )

        def backward(upstream, x, y, gamma, beta, mean, inverse):
            return operations.bit_group_norm_grad(
                upstream, x, gamma, beta, mean, inverse, groups=groups, relu=relu
            )

    else:
        forward, compiled_backward = _group_norm_functions(groups, epsilon, relu, int(x.shape[-1]))

        def backward(upstream, x, y, gamma, beta, mean, inverse):
            return compiled_backward(upstream, x, y, gamma, mean, inverse)

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        y, mean, inverse = forward(x, gamma, beta)

        def gradient(upstream):
            return backward(upstream, x, y, gamma, beta, mean, inverse)

        return y, gradient

    return normalize(x, gamma, beta)


@functools.cache
def _standardize_functions(shape: tuple, epsilon: float):
    """The compiled forward and backward of weight standardization for one kernel shape.

    The backward takes the forward's per-channel mean and 1/std instead of recomputing them:
    two passes fewer over the kernel (R50x1's 53 kernels: 65-67 -> 59 ms per backward).
    """

    @tf.function(jit_compile=True, autograph=False)
    def forward(kernel):
        columns = tf.reshape(kernel, [-1, shape[-1]])
        mean = tf.reduce_mean(columns, axis=0, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(columns, mean), axis=0, keepdims=True)
        inverse = tf.math.rsqrt(variance + epsilon)
        return tf.reshape((columns - mean) * inverse, shape), mean, inverse

    @tf.function(jit_compile=True, autograph=False)
    def backward(upstream, kernel, mean, inverse):
        columns = tf.reshape(kernel, [-1, shape[-1]])
        d_columns = tf.reshape(upstream, [-1, shape[-1]])
        standardized = (columns - mean) * inverse
        mean_d = tf.reduce_mean(d_columns, axis=0, keepdims=True)
        mean_d_standardized = tf.reduce_mean(d_columns * standardized, axis=0, keepdims=True)
        d_kernel = (d_columns - mean_d - standardized * mean_d_standardized) * inverse
        return tf.reshape(d_kernel, shape)

    return forward, backward


def standardize_kernel(kernel, *, epsilon: float):
    """Weight standardization of a [..., out_channels] kernel in float32, fused and compiled.

    Each output channel is shifted to mean 0 and scaled to variance 1 over all other axes
    (variance without Bessel's correction, epsilon inside the square root).

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
        forward, backward = _standardize_functions(tuple(kernel.shape.as_list()), float(epsilon))

    @tf.custom_gradient
    def standardize(kernel):
        standardized, mean, inverse = forward(kernel)

        def gradient(upstream):
            return backward(upstream, kernel, mean, inverse)

        return standardized, gradient

    return standardize(kernel)


def matrix_product_convolution(inputs, kernel, stride: int = 1, padding: str = "valid"):
    """A convolution that `bit_tf.layers.favours_matrix_product` chose, as a matrix product:
    `pointwise_convolution` for 1x1 kernels with stride 1, else `patch_convolution`.

    Example:
        >>> matrix_product_convolution(tf.ones([2, 4, 4, 8]), tf.ones([1, 1, 8, 3])).shape
        TensorShape([2, 4, 4, 3])
    """
    if int(kernel.shape[0]) == 1 and stride == 1:
        return pointwise_convolution(inputs, kernel)
    return patch_convolution(inputs, kernel, stride, padding)


def pointwise_convolution(inputs, kernel):
    """A 1x1, stride-1, channels-last convolution as one matrix product, (batch * pixels, in)
    @ (in, out): faster than TensorFlow's oneDNN convolution on few pixels
    (`bit_tf.layers.favours_matrix_product`). Static height and width.

    Example:
        >>> pointwise_convolution(tf.ones([2, 4, 4, 8]), tf.ones([1, 1, 8, 3])).shape
        TensorShape([2, 4, 4, 3])
    """
    rows = tf.reshape(inputs, [-1, inputs.shape[-1]])
    outputs = tf.matmul(rows, tf.reshape(kernel, kernel.shape[2:]))
    return tf.reshape(outputs, [-1, *inputs.shape[1:3], kernel.shape[-1]])


@functools.cache
def _patch_function(kernel_size: int, stride: int, padding: str):
    """A compiled [batch, height, width, C] -> [batch * out_height * out_width, k * k * C]: each
    output pixel's k x k window of the input ("same": zero-padded by k // 2, stride 1 only),
    ordered as the rows of an HWIO kernel.

    Strided slices of the input, which XLA compiles into one copy; TensorFlow's own strided
    slices are several times slower, and `tf.image.extract_patches` under XLA is a slow gather.
    """

    @tf.function(jit_compile=True, autograph=False)
    def patches(inputs):
        if padding == "same":
            margin = kernel_size // 2
            inputs = tf.pad(inputs, [[0, 0], [margin, margin], [margin, margin], [0, 0]])
        height = output_size(inputs.shape[1], kernel_size, stride, "valid")
        width = output_size(inputs.shape[2], kernel_size, stride, "valid")
        windows = [
            inputs[
                :,
                row : row + stride * (height - 1) + 1 : stride,
                column : column + stride * (width - 1) + 1 : stride,
                :,
            ]
            for row in range(kernel_size)
            for column in range(kernel_size)
        ]
        return tf.reshape(tf.concat(windows, axis=-1), [-1, len(windows) * inputs.shape[-1]])

    return patches


def patch_convolution(inputs, kernel, stride: int = 1, padding: str = "valid"):
    """A square, channels-last convolution as one matrix product of the input's patches with
    the kernel: faster than TensorFlow's oneDNN convolution on very few output pixels
    (`bit_tf.layers.favours_matrix_product`; R50x1 at 128x128: its 3x3 and strided 1x1 layers
    with 4x4 outputs). The filter gradient is a matrix product too; the input gradient stays
    TensorFlow's convolution. Static height and width; "same" padding only with stride 1.

    Example:
        >>> patch_convolution(tf.ones([2, 4, 4, 8]), tf.ones([3, 3, 8, 5]), 1, "same").shape
        TensorShape([2, 4, 4, 5])
        >>> patch_convolution(tf.ones([2, 10, 10, 8]), tf.ones([3, 3, 8, 5]), 2).shape
        TensorShape([2, 4, 4, 5])
    """
    kernel_size, output_channels = int(kernel.shape[0]), int(kernel.shape[-1])
    padding = padding.lower()
    if padding == "same" and stride != 1 and kernel_size > 1:
        raise ValueError(f"patch_convolution pads 'same' only with stride 1, got stride {stride}")
    patches = _patch_function(kernel_size, int(stride), padding)
    height, width = (output_size(size, kernel_size, stride, padding) for size in inputs.shape[1:3])

    @tf.custom_gradient
    def convolve(inputs, kernel):
        rows = patches(inputs) @ tf.reshape(kernel, [-1, output_channels])

        def gradient(upstream):
            upstream_rows = tf.reshape(upstream, [-1, output_channels])
            # The patches again rather than kept from the forward pass: k*k times the input's
            # memory until the backward pass, for one cheap copy.
            d_kernel = tf.matmul(patches(inputs), upstream_rows, transpose_a=True)
            d_inputs = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(inputs),
                filter=kernel,
                out_backprop=upstream,
                strides=[1, stride, stride, 1],
                padding=padding.upper(),
            )
            return d_inputs, tf.reshape(d_kernel, tf.shape(kernel))

        return tf.reshape(rows, [-1, height, width, output_channels]), gradient

    return convolve(inputs, kernel)
