"""The building blocks of BiT: weight-standardized convolutions, GroupNorm, pre-activation units.

Only `keras` and `keras.ops` are used here, so the layers run on every Keras 3 backend; on the
TensorFlow backend, weight standardization and GroupNorm(+ReLU) run as fused, XLA-compiled
kernels (`bit_tf.fused`) with the same results, and on JAX GroupNorm(+ReLU) runs with
column statistics and a closed-form gradient (`bit_tf.fused_jax`).

Example:
    >>> import numpy as np
    >>> from bit_tf.layers import PreActBottleneck
    >>> unit = PreActBottleneck(middle_channels=64, strides=2)
    >>> unit(np.zeros((1, 32, 32, 64), "float32")).shape
    (1, 16, 16, 256)
"""

from __future__ import annotations

import keras
from keras import ops

_FUSED_KERNELS = {"enabled": True}


def use_fused_kernels(enabled: bool) -> bool:
    """Turns the fused kernels (`bit_tf.fused`, `bit_tf.fused_jax`) on or off; returns the old
    setting.

    They are on by default and give the same results; turning them off runs the plain Keras
    ops (for debugging, or to compare).

    Example:
        >>> previous = use_fused_kernels(False)
        >>> use_fused_kernels(previous)
        False
    """
    previous = _FUSED_KERNELS["enabled"]
    _FUSED_KERNELS["enabled"] = bool(enabled)
    return previous


def _fused():
    """`bit_tf.fused` on the TensorFlow backend, else None (imported lazily: it needs TF)."""
    if keras.backend.backend() != "tensorflow" or not _FUSED_KERNELS["enabled"]:
        return None
    from bit_tf import fused

    return fused


def _recompute():
    """`bit_tf.recompute` on the TensorFlow backend with the fused kernels on, else None."""
    if _fused() is None:
        return None
    from bit_tf import recompute

    return recompute


def _fused_group_norm():
    """The module whose `group_norm` fuses GroupNorm(+ReLU) on this backend, or None.

    `bit_tf.fused` on TensorFlow, `bit_tf.fused_jax` on JAX (there only the GroupNorm needs
    it: JAX compiles the weight standardization into the step already).
    """
    if not _FUSED_KERNELS["enabled"]:
        return None
    if keras.backend.backend() == "jax":
        from bit_tf import fused_jax

        return fused_jax
    return _fused()


PACKAGE = "bit_tf"
# BiT's constants, shared with the plain-TensorFlow forward pass of hub_export.
STANDARDIZATION_EPSILON = 1e-10
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPSILON = 1e-5
NORMALIZATIONS = ("group", "batch", "noisy_batch", "none")
# Convolutions with at most this many output pixels, by kernel size, run as matrix products on
# TensorFlow: 1x1 ones up to 8x8, 3x3 ones (on their patches) up to 4x4.
MATMUL_MAX_PIXELS = {1: 64, 3: 16}


def favours_matrix_product(kernel_size, strides, input_shape, padding: str = "valid") -> bool:
    """Whether a channels-last convolution is faster as a matrix product on TensorFlow's CPU
    kernels: a 1x1 or 3x3 kernel with at most `MATMUL_MAX_PIXELS` output pixels for its size
    (static height and width), equal strides, and "same" padding only with stride 1.

    There TensorFlow's oneDNN convolutions are slower than its matrix product. R50x1 at
    128x128, forward and filter gradient: the 4x4x512 3x3 layers 14.7 against 11.2 ms, the 3x3
    layer with stride 2 to 4x4 17.8 against 11.5, the 1x1 with stride 2 to 4x4 13.9 against 9.3;
    but a 3x3 layer with stride 2 to 8x8 10.8 against 11.5, and 1x1 layers at 32x32 favour the
    convolution too (benchmarks/RESULTS.md).

    Example:
        >>> favours_matrix_product((1, 1), (1, 1), (16, 4, 4, 2048))
        True
        >>> favours_matrix_product((3, 3), (1, 1), (16, 4, 4, 512), padding="same")
        True
        >>> favours_matrix_product((3, 3), (2, 2), (16, 18, 18, 256))
        False
    """
    size, strides = tuple(kernel_size), tuple(strides)
    if size[0] != size[-1] or size[0] not in MATMUL_MAX_PIXELS or strides[0] != strides[-1]:
        return False
    if padding.lower() == "same" and strides[0] != 1 and size[0] > 1:
        return False
    height, width = input_shape[1:3]
    if height is None or width is None:
        return False
    pixels = 1
    for extent in (height, width):
        pixels *= output_size(extent, size[0], strides[0], padding)
    return pixels <= MATMUL_MAX_PIXELS[size[0]]


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class StandardizedConv2D(keras.layers.Conv2D):
    """A 2-D convolution whose kernel is standardized before every use (Qiao et al., 2019).

    Each output channel's kernel is shifted to mean 0 and scaled to variance 1 over
    (height, width, input channels): `w_hat = (w - mean) / sqrt(var + epsilon)`, with the
    variance taken without Bessel's correction, exactly as the BiT reference code does.

    Args:
        filters: number of output channels.
        kernel_size: an int or a pair.
        epsilon: added to the variance inside the square root (BiT: 1e-10).
        **kwargs: any other `keras.layers.Conv2D` argument. `use_bias` defaults to False.

    Example:
        >>> conv = StandardizedConv2D(16, 3, padding="same")
        >>> conv(np.ones((2, 8, 8, 3), "float32")).shape
        (2, 8, 8, 16)
    """

    def __init__(
        self, filters: int, kernel_size, *, epsilon: float = STANDARDIZATION_EPSILON, **kwargs
    ):
        kwargs.setdefault("use_bias", False)
        super().__init__(filters, kernel_size, **kwargs)
        self.epsilon = epsilon

    def standardized_kernel(self, kernel=None):
        """Returns the kernel the convolution actually uses (computed in float32)."""
        kernel = self.kernel if kernel is None else kernel
        fused = _fused()
        if fused is not None:
            return fused.standardize_kernel(kernel, epsilon=self.epsilon)
        kernel = ops.cast(kernel, "float32")
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        variance = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return (kernel - mean) * ops.rsqrt(variance + self.epsilon)

    def convolution_op(self, inputs, kernel):
        return self.convolve_standardized(inputs, self.standardized_kernel(kernel))

    def convolve_standardized(self, inputs, standardized_kernel):
        """The convolution with a kernel that is standardized already (`standardized_kernel`).

        Example:
            >>> conv = StandardizedConv2D(4, 1)
            >>> conv.build((1, 2, 2, 3))
            >>> conv.convolve_standardized(np.ones((1, 2, 2, 3), "float32"),
            ...                            conv.standardized_kernel()).shape
            TensorShape([1, 2, 2, 4])
        """
        kernel = ops.cast(standardized_kernel, inputs.dtype)
        fused = _fused()
        if fused is not None and self._as_matrix_product(inputs):
            return fused.matrix_product_convolution(inputs, kernel, self.strides[0], self.padding)
        return super().convolution_op(inputs, kernel)

    def _as_matrix_product(self, inputs) -> bool:
        """Whether this convolution runs as one matrix product on TensorFlow (fused kernels on)."""
        plain = self.dilation_rate == (1, 1) and self.groups == 1
        return (
            plain
            and self.data_format == "channels_last"
            and favours_matrix_product(self.kernel_size, self.strides, inputs.shape, self.padding)
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNormalization(keras.layers.GroupNormalization):
    """Group normalization with BiT's settings: 32 groups, epsilon 1e-5.

    `keras.layers.GroupNormalization` defaults to epsilon 1e-3, which does not reproduce the
    official checkpoints; this subclass only changes the defaults.

    Example:
        >>> GroupNormalization()(np.ones((1, 4, 4, 64), "float32")).shape
        (1, 4, 4, 64)
    """

    def __init__(
        self, groups: int = GROUP_NORM_GROUPS, epsilon: float = GROUP_NORM_EPSILON, **kwargs
    ):
        super().__init__(groups=groups, epsilon=epsilon, **kwargs)

    def _fusable(self, inputs):
        fused = _fused_group_norm()
        if fused is None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return None
        if not (self.scale and self.center) or inputs.shape[-1] % self.groups:
            return None
        if fused is _fused() and not fused.available(inputs.dtype):
            return None
        return fused

    def call(self, inputs):
        fused = self._fusable(inputs)
        if fused is None:
            return super().call(inputs)
        return self._fused_call(fused, inputs, relu=False)

    def normalize_and_relu(self, inputs):
        """`relu(self(inputs))`, in one fused pass on the TensorFlow backend.

        Example:
            >>> GroupNormalization().normalize_and_relu(np.ones((1, 4, 4, 64), "float32")).shape
            (1, 4, 4, 64)
        """
        if not self.built:
            self.build(inputs.shape)
        fused = self._fusable(inputs)
        if fused is None:
            return ops.relu(self(inputs))
        return self._fused_call(fused, inputs, relu=True)

    def _fused_call(self, fused, inputs, relu: bool, gamma=None, beta=None):
        """GroupNorm(+ReLU) by `fused`, with this layer's gamma and beta unless given (as
        tensors: `bit_tf.recompute` passes them through its custom gradient)."""
        gamma = self.gamma if gamma is None else gamma
        beta = self.beta if beta is None else beta
        if keras.backend.backend() == "jax":  # jax.custom_vjp takes arrays, not variables
            gamma, beta = ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta)
        outputs = fused.group_norm(
            inputs, gamma, beta, groups=self.groups, epsilon=self.epsilon, relu=relu
        )
        return ops.cast(outputs, self.compute_dtype)


def activate(norm, inputs, training=None):
    """BiT's pre-activation: `relu(norm(inputs))`, GroupNorm and ReLU fused where they can be;
    `norm` None gives the ReLU alone.

    Example:
        >>> activate(GroupNormalization(), np.ones((1, 4, 4, 64), "float32")).shape
        (1, 4, 4, 64)
    """
    if isinstance(norm, GroupNormalization):
        return norm.normalize_and_relu(inputs)
    if norm is not None:
        inputs = norm(inputs, training=training)
    return ops.relu(inputs)


def pad_for_stride(conv, inputs):
    """The reference code's symmetric padding of 1 before a 3x3 (or larger) convolution with a
    stride ("valid" then); other inputs unchanged.

    Example:
        >>> conv = StandardizedConv2D(8, 3, strides=2)
        >>> pad_for_stride(conv, np.ones((1, 6, 6, 4), "float32")).shape
        (1, 8, 8, 4)
    """
    if conv.strides[0] != 1 and conv.kernel_size[0] > 1:
        return ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return inputs


def make_normalization(kind: str, name: str | None = None, dtype=None) -> keras.layers.Layer | None:
    """Returns the normalization layer named by `kind` (see `NORMALIZATIONS`), None for "none".

    `dtype` is the layer's dtype policy (None: Keras' global policy).

    Example:
        >>> type(make_normalization("group")).__name__
        'GroupNormalization'
    """
    if kind == "group":
        return GroupNormalization(name=name, dtype=dtype)
    if kind == "batch":
        return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name, dtype=dtype)
    if kind == "noisy_batch":
        from bit_tf.noisy_batch_norm import NoisyBatchNormalization

        return NoisyBatchNormalization(name=name, dtype=dtype)
    if kind == "none":
        return None
    raise ValueError(f"Unknown normalization {kind!r}; choose one of {NORMALIZATIONS}.")


def make_convolution(
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    weight_standardization: bool = True,
    name: str | None = None,
    dtype=None,
) -> keras.layers.Layer:
    """A bias-free convolution, weight-standardized unless asked otherwise.

    `dtype` is the layer's dtype policy (None: Keras' global policy).

    Kernels of size > 1 with stride 1 use "same" padding, which is symmetric then. With a
    stride, callers pad explicitly (as the reference code does) and the convolution is "valid".
    """
    padding = "same" if (kernel_size > 1 and strides == 1) else "valid"
    layer_class = StandardizedConv2D if weight_standardization else keras.layers.Conv2D
    return layer_class(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        name=name,
        dtype=dtype,
    )


class _PreActUnit(keras.layers.Layer):
    """Shared plumbing of the two pre-activation units: config, norms, the projection."""

    def __init__(
        self,
        output_channels: int,
        strides: int = 1,
        *,
        normalization: str = "group",
        weight_standardization: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}."
            )
        self.output_channels = output_channels
        self.strides = strides
        self.normalization = normalization
        self.weight_standardization = weight_standardization
        self.projection = None

    # Sublayers take the unit's own dtype policy, so that a unit built or loaded under a mixed
    # policy computes in it whatever Keras' global policy is at that time.
    def _norm(self, name: str):
        return make_normalization(self.normalization, name=name, dtype=self.dtype_policy)

    def _conv(self, filters: int, kernel_size: int, strides: int = 1, name: str | None = None):
        return make_convolution(
            filters,
            kernel_size,
            strides=strides,
            weight_standardization=self.weight_standardization,
            name=name,
            dtype=self.dtype_policy,
        )

    def _build_projection(self, input_shape):
        if self.strides != 1 or input_shape[-1] != self.output_channels:
            self.projection = self._conv(self.output_channels, 1, self.strides, name="proj")
            self.projection.build(input_shape)

    @staticmethod
    def _activate_and_convolve(norm, inputs, convolutions, training) -> list:
        """Each of `convolutions` applied to `relu(norm(inputs))`; on TensorFlow's CPU training
        path with the pre-activation recomputed in the backward pass (`bit_tf.recompute`)."""
        recompute = _recompute()
        if recompute is not None and recompute.recomputes(norm, inputs, convolutions):
            return recompute.activate_and_convolve(norm, inputs, convolutions)
        activated = activate(norm, inputs, training)
        return [conv(pad_for_stride(conv, activated)) for conv in convolutions]

    def _padded_shape(self, shape):
        """The input shape of the 3x3 convolution that carries the stride, once padded
        (`pad_for_stride`)."""
        if self.strides == 1:
            return shape
        return (shape[0], *(None if size is None else size + 2 for size in shape[1:3]), shape[3])

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if self.strides != 1:
            height = None if height is None else (height - 1) // self.strides + 1
            width = None if width is None else (width - 1) // self.strides + 1
        return (input_shape[0], height, width, self.output_channels)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "strides": self.strides,
            "normalization": self.normalization,
            "weight_standardization": self.weight_standardization,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PreActBottleneck(_PreActUnit):
    """The pre-activation (ResNet v2) bottleneck unit of BiT.

    GN -> ReLU gives the pre-activation, which feeds both the projection shortcut (a 1x1
    convolution, present when the stride is not 1 or the channel count changes) and a 1x1
    convolution to `middle_channels`; then GN -> ReLU -> 3x3 convolution carrying the stride;
    then GN -> ReLU -> 1x1 convolution to `4 * middle_channels`; plus the shortcut.

    Args:
        middle_channels: width of the 3x3 convolution; the unit outputs 4x as many channels.
        strides: 1 or 2, applied by the 3x3 convolution and the projection.
        normalization: "group" (BiT), "batch", "noisy_batch" or "none".
        weight_standardization: standardize the convolution kernels (BiT: True).

    Example:
        >>> unit = PreActBottleneck(middle_channels=16)
        >>> unit(np.zeros((1, 8, 8, 32), "float32")).shape
        (1, 8, 8, 64)
    """

    expansion = 4

    def __init__(self, middle_channels: int, strides: int = 1, **kwargs):
        super().__init__(middle_channels * self.expansion, strides, **kwargs)
        self.middle_channels = middle_channels
        self.norm_a = self._norm("a_norm")
        self.conv_a = self._conv(middle_channels, 1, name="a_conv")
        self.norm_b = self._norm("b_norm")
        self.conv_b = self._conv(middle_channels, 3, strides, name="b_conv")
        self.norm_c = self._norm("c_norm")
        self.conv_c = self._conv(self.output_channels, 1, name="c_conv")

    def build(self, input_shape):
        middle_shape = (*input_shape[:-1], self.middle_channels)
        if self.norm_a is not None:
            self.norm_a.build(input_shape)
        self._build_projection(input_shape)
        self.conv_a.build(input_shape)
        for norm in (self.norm_b, self.norm_c):
            if norm is not None:
                norm.build(middle_shape)
        self.conv_b.build(self._padded_shape(middle_shape))
        self.conv_c.build(middle_shape)

    def call(self, inputs, training=None):
        first = [self.conv_a] if self.projection is None else [self.conv_a, self.projection]
        outputs, *projected = self._activate_and_convolve(self.norm_a, inputs, first, training)
        shortcut = projected[0] if projected else inputs
        [outputs] = self._activate_and_convolve(self.norm_b, outputs, [self.conv_b], training)
        [outputs] = self._activate_and_convolve(self.norm_c, outputs, [self.conv_c], training)
        return outputs + shortcut

    def get_config(self) -> dict:
        return {**super().get_config(), "middle_channels": self.middle_channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PreActBasic(_PreActUnit):
    """The pre-activation basic unit (two 3x3 convolutions), for ResNetV2-18 and -34.

    GN -> ReLU gives the pre-activation, which feeds the projection shortcut (when needed) and
    a 3x3 convolution carrying the stride; then GN -> ReLU -> 3x3 convolution; plus the shortcut.

    Args:
        channels: output channels of both convolutions.
        strides: 1 or 2, applied by the first convolution and the projection.
        normalization: "group" (BiT), "batch", "noisy_batch" or "none".
        weight_standardization: standardize the convolution kernels (BiT: True).

    Example:
        >>> PreActBasic(channels=16, strides=2)(np.zeros((1, 8, 8, 16), "float32")).shape
        (1, 4, 4, 16)
    """

    expansion = 1

    def __init__(self, channels: int, strides: int = 1, **kwargs):
        super().__init__(channels, strides, **kwargs)
        self.norm_a = self._norm("a_norm")
        self.conv_a = self._conv(channels, 3, strides, name="a_conv")
        self.norm_b = self._norm("b_norm")
        self.conv_b = self._conv(channels, 3, name="b_conv")

    @property
    def channels(self) -> int:
        return self.output_channels

    def build(self, input_shape):
        output_shape = (*input_shape[:-1], self.output_channels)
        if self.norm_a is not None:
            self.norm_a.build(input_shape)
        self._build_projection(input_shape)
        self.conv_a.build(self._padded_shape(input_shape))
        if self.norm_b is not None:
            self.norm_b.build(output_shape)
        self.conv_b.build(output_shape)

    def call(self, inputs, training=None):
        first = [self.conv_a] if self.projection is None else [self.conv_a, self.projection]
        outputs, *projected = self._activate_and_convolve(self.norm_a, inputs, first, training)
        shortcut = projected[0] if projected else inputs
        [outputs] = self._activate_and_convolve(self.norm_b, outputs, [self.conv_b], training)
        return outputs + shortcut

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.output_channels}
