"""Convolutions on very few output pixels as matrix products, for TensorFlow on CPUs.

There TensorFlow's oneDNN convolutions cost more than a matrix product of the same work when
the output has only a few pixels (BiT's last block at small image sizes). `favours_matrix_product`
says which convolutions qualify; `matrix_product_convolution` computes them: a 1x1 stride-1
kernel as one product of the pixels with the kernel, any other square kernel as a product of
the input's patches with the kernel, whose filter gradient is a matrix product too.

Example:
    >>> import tensorflow as tf
    >>> from bit_tf.kernels import matmul
    >>> matmul.favours_matrix_product(1, 1, (16, 4, 4, 2048), "valid")
    True
    >>> matmul.matrix_product_convolution(tf.ones([2, 4, 4, 8]), tf.ones([1, 1, 8, 3])).shape
    TensorShape([2, 4, 4, 3])
"""

from __future__ import annotations

import functools

import tensorflow as tf

# The most output pixels, by kernel size, at which a convolution runs as a matrix product:
# 1x1 ones up to 8x8, 3x3 ones up to 4x4 (benchmarks/RESULTS.md has the measurements).
MATMUL_MAX_PIXELS = {1: 64, 3: 16}


def output_size(size: int, kernel_size: int, stride: int, padding: str) -> int:
    """The output height (or width) of a convolution: "same" padding keeps ceil(size/stride),
    "valid" takes only the windows inside the input.

    Example:
        >>> output_size(10, 3, 2, "valid")
        4
    """
    if padding.lower() == "same":
        return -(-size // stride)
    return (size - kernel_size) // stride + 1


def favours_matrix_product(kernel_size: int, stride: int, input_shape, padding: str) -> bool:
    """Whether a square, channels-last convolution is faster as a matrix product: a 1x1 or 3x3
    kernel with at most `MATMUL_MAX_PIXELS` output pixels for its size (static height and
    width), and "same" padding only with stride 1.

    Example:
        >>> favours_matrix_product(3, 1, (16, 4, 4, 512), "same")
        True
        >>> favours_matrix_product(3, 2, (16, 18, 18, 256), "valid")
        False
    """
    if kernel_size not in MATMUL_MAX_PIXELS:
        return False
    if padding.lower() == "same" and stride != 1 and kernel_size > 1:
        return False
    height, width = input_shape[1:3]
    if height is None or width is None:
        return False
    pixels = output_size(height, kernel_size, stride, padding)
    pixels *= output_size(width, kernel_size, stride, padding)
    return pixels <= MATMUL_MAX_PIXELS[kernel_size]


def matrix_product_convolution(inputs, kernel, stride: int = 1, padding: str = "valid"):
    """A convolution that `favours_matrix_product` chose, as a matrix product:
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
    @ (in, out). Static height and width.

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
    the kernel. The filter gradient is a matrix product too; the input gradient stays
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
