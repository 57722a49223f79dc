"""The building blocks of BiT: weight-standardized convolutions, GroupNorm, pre-activation units.

Each unit's `call` reads as the paper draws it; the math of GroupNorm, weight standardization
and the convolutions is one call each into `bit_tf.kernels`, which chooses how it runs. Only
`keras` and `keras.ops` are used here, so the layers run on every Keras 3 backend.

Example:
    >>> import numpy as np
    >>> from bit_tf.models.layers import PreActBottleneck
    >>> unit = PreActBottleneck(middle_channels=64, strides=2)
    >>> unit(np.zeros((1, 32, 32, 64), "float32")).shape
    (1, 16, 16, 256)
"""

from __future__ import annotations

import keras
from keras import ops

from bit_tf import kernels
from bit_tf.models.noisy_batch_norm import NoisyBatchNormalization

PACKAGE = "bit_tf"
STANDARDIZATION_EPSILON = 1e-10
GROUP_NORM_GROUPS = 32
GROUP_NORM_EPSILON = 1e-5
NORMALIZATIONS = ("group", "batch", "noisy_batch", "none")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose convolution runs through `bit_tf.kernels.convolution`.

    The same layer and arguments; a square, undilated, ungrouped, channels-last convolution
    with equal strides goes to the kernels (which may make it a matrix product), any other
    to Keras. `use_bias` defaults to False, as in BiT.

    Example:
        >>> Conv2D(8, 1)(np.ones((2, 4, 4, 3), "float32")).shape
        (2, 4, 4, 8)
    """

    def __init__(self, filters: int, kernel_size, **kwargs):
        kwargs.setdefault("use_bias", False)
        super().__init__(filters, kernel_size, **kwargs)

    def _through_kernels(self) -> bool:
        size, strides = tuple(self.kernel_size), tuple(self.strides)
        return (
            size[0] == size[1]
            and strides[0] == strides[1]
            and self.dilation_rate == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
        )

    def convolution_op(self, inputs, kernel):
        if not self._through_kernels():
            return super().convolution_op(inputs, kernel)
        return kernels.convolution(inputs, kernel, strides=self.strides[0], padding=self.padding)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StandardizedConv2D(Conv2D):
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
        super().__init__(filters, kernel_size, **kwargs)
        self.epsilon = epsilon

    def standardized_kernel(self):
        """The kernel the convolution actually uses, standardized (float32).

        Example:
            >>> conv = StandardizedConv2D(4, 1)
            >>> conv.build((1, 2, 2, 3))
            >>> tuple(conv.standardized_kernel().shape)
            (1, 1, 3, 4)
        """
        return kernels.standardize_kernel(self.kernel, epsilon=self.epsilon)

    def convolution_op(self, inputs, kernel):
        if not self._through_kernels():
            standardized = kernels.standardize_kernel(kernel, epsilon=self.epsilon)
            return super().convolution_op(inputs, ops.cast(standardized, inputs.dtype))
        return kernels.standardized_convolution(
            inputs, kernel, epsilon=self.epsilon, strides=self.strides[0], padding=self.padding
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNormalization(keras.layers.GroupNormalization):
    """Group normalization with BiT's settings (32 groups, epsilon 1e-5), then ReLU if `relu`.

    `keras.layers.GroupNormalization` defaults to epsilon 1e-3, which does not reproduce the
    official checkpoints. With `relu=True` the layer is BiT's pre-activation, GN -> ReLU, one
    operation of `bit_tf.kernels`.

    Args:
        groups: channel groups (BiT: 32).
        epsilon: added to the variance (BiT: 1e-5).
        relu: apply ReLU to the output.
        **kwargs: any other `keras.layers.GroupNormalization` argument.

    Example:
        >>> GroupNormalization(relu=True)(np.ones((1, 4, 4, 64), "float32")).shape
        (1, 4, 4, 64)
    """

    def __init__(
        self,
        groups: int = GROUP_NORM_GROUPS,
        epsilon: float = GROUP_NORM_EPSILON,
        relu: bool = False,
        **kwargs,
    ):
        super().__init__(groups=groups, epsilon=epsilon, **kwargs)
        self.relu = bool(relu)

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
            outputs = super().call(inputs)  # Keras' own layout and options
            return ops.relu(outputs) if self.relu else outputs
        outputs = kernels.group_norm(
            inputs, self.gamma, self.beta, groups=self.groups, epsilon=self.epsilon, relu=self.relu
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "relu": self.relu}


class _ThenReLU:
    """Mixin: the normalization layer's output, then ReLU (BiT's pre-activation)."""

    def call(self, inputs, training=None):
        return ops.relu(super().call(inputs, training=training))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalizationReLU(_ThenReLU, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, then ReLU: a pre-activation for normalization ablations.

    Example:
        >>> BatchNormalizationReLU()(np.ones((2, 4, 4, 8), "float32")).shape
        (2, 4, 4, 8)
    """


@keras.saving.register_keras_serializable(package=PACKAGE)
class NoisyBatchNormalizationReLU(_ThenReLU, NoisyBatchNormalization):
    """`bit_tf.models.noisy_batch_norm.NoisyBatchNormalization`, then ReLU.

    Example:
        >>> NoisyBatchNormalizationReLU()(np.ones((2, 4, 4, 8), "float32")).shape
        (2, 4, 4, 8)
    """


def convolutions(model: keras.Model) -> list:
    """Every convolution layer of a model built from these layers: its own `Conv2D`s and
    those inside its units.

    Example:
        >>> len(convolutions(bit_tf.create_model("BiT-S-R50x1")))
        53
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            found.append(layer)
        elif isinstance(layer, _PreActUnit):
            found.extend(layer.convolutions())
    return found


def pad_for_stride(conv, inputs):
    """The reference code's symmetric padding of 1 before a 3x3 (or larger) convolution with a
    stride ("valid" then); other inputs unchanged.

    Example:
        >>> conv = StandardizedConv2D(8, 3, strides=2)
        >>> pad_for_stride(conv, np.ones((1, 6, 6, 4), "float32")).shape
        (1, 8, 8, 4)
    """
    if conv.strides[0] != 1 and conv.kernel_size[0] > 1:
        margin = (conv.kernel_size[0] - 1) // 2
        return ops.pad(inputs, [[0, 0], [margin, margin], [margin, margin], [0, 0]])
    return inputs


def make_normalization(
    kind: str, name: str | None = None, dtype=None, relu: bool = False
) -> keras.layers.Layer | None:
    """The normalization layer named by `kind` (see `NORMALIZATIONS`), followed by ReLU when
    `relu` (the pre-activation of a unit). "none" gives None, or a ReLU layer when `relu`.

    `dtype` is the layer's dtype policy (None: Keras' global policy).

    Example:
        >>> type(make_normalization("group")).__name__
        'GroupNormalization'
        >>> type(make_normalization("none", relu=True)).__name__
        'ReLU'
    """
    options = {"name": name, "dtype": dtype}
    if kind == "group":
        return GroupNormalization(relu=relu, **options)
    if kind == "batch":
        layer_class = BatchNormalizationReLU if relu else keras.layers.BatchNormalization
        return layer_class(epsilon=1e-5, momentum=0.9, **options)
    if kind == "noisy_batch":
        layer_class = NoisyBatchNormalizationReLU if relu else NoisyBatchNormalization
        return layer_class(**options)
    if kind == "none":
        return keras.layers.ReLU(**options) if relu else None
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

    `dtype` is the layer's dtype policy (None: Keras' global policy). Kernels of size > 1 with
    stride 1 use "same" padding, which is symmetric then. With a stride, callers pad explicitly
    (`pad_for_stride`, as the reference code does) and the convolution is "valid".

    Example:
        >>> make_convolution(64, 3, strides=2).padding
        'valid'
    """
    padding = "same" if (kernel_size > 1 and strides == 1) else "valid"
    layer_class = StandardizedConv2D if weight_standardization else Conv2D
    return layer_class(
        filters, kernel_size, strides=strides, padding=padding, name=name, dtype=dtype
    )


class _PreActUnit(keras.layers.Layer):
    """What the two pre-activation units share: options, config, the projection shortcut.

    `norm_a`, `norm_b` (and `norm_c`) are the pre-activations, normalization then ReLU.
    """

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
    def _preactivation(self, name: str):
        return make_normalization(self.normalization, name=name, dtype=self.dtype_policy, relu=True)

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

    def convolutions(self) -> list:
        """The unit's convolution layers (the projection first, where there is one).

        Example:
            >>> [conv.name for conv in PreActBasic(8).convolutions()]
            ['a_conv', 'b_conv']
        """
        found = [] if self.projection is None else [self.projection]
        return found + [
            getattr(self, name) for name in ("conv_a", "conv_b", "conv_c") if hasattr(self, name)
        ]

    def _shortcut(self, inputs, preactivated):
        """The identity, or the projection of the pre-activated input where the shape changes."""
        return inputs if self.projection is None else self.projection(preactivated)

    @staticmethod
    def _build_all(pairs) -> None:
        for layer, shape in pairs:
            layer.build(shape)

    def _padded_shape(self, shape):
        """The input shape of the convolution that carries the stride, once padded."""
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
        self.norm_a = self._preactivation("a_norm")
        self.conv_a = self._conv(middle_channels, 1, name="a_conv")
        self.norm_b = self._preactivation("b_norm")
        self.conv_b = self._conv(middle_channels, 3, strides, name="b_conv")
        self.norm_c = self._preactivation("c_norm")
        self.conv_c = self._conv(self.output_channels, 1, name="c_conv")

    def build(self, input_shape):
        middle_shape = (*input_shape[:-1], self.middle_channels)
        self._build_projection(input_shape)
        self._build_all(
            [
                (self.norm_a, input_shape),
                (self.conv_a, input_shape),
                (self.norm_b, middle_shape),
                (self.conv_b, self._padded_shape(middle_shape)),
                (self.norm_c, middle_shape),
                (self.conv_c, middle_shape),
            ]
        )

    def call(self, inputs, training=None):
        preactivated = self.norm_a(inputs, training=training)
        shortcut = self._shortcut(inputs, preactivated)
        x = self.conv_a(preactivated)
        x = self.conv_b(pad_for_stride(self.conv_b, self.norm_b(x, training=training)))
        x = self.conv_c(self.norm_c(x, training=training))
        return x + shortcut

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
        self.norm_a = self._preactivation("a_norm")
        self.conv_a = self._conv(channels, 3, strides, name="a_conv")
        self.norm_b = self._preactivation("b_norm")
        self.conv_b = self._conv(channels, 3, name="b_conv")

    @property
    def channels(self) -> int:
        return self.output_channels

    def build(self, input_shape):
        output_shape = (*input_shape[:-1], self.output_channels)
        self._build_projection(input_shape)
        self._build_all([(self.norm_a, input_shape), (self.norm_b, output_shape)])
        self._build_all(
            [(self.conv_a, self._padded_shape(input_shape)), (self.conv_b, output_shape)]
        )

    def call(self, inputs, training=None):
        preactivated = self.norm_a(inputs, training=training)
        shortcut = self._shortcut(inputs, preactivated)
        x = self.conv_a(pad_for_stride(self.conv_a, preactivated))
        x = self.conv_b(self.norm_b(x, training=training))
        return x + shortcut

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.output_channels}
