"""The BiT forward pass in plain TensorFlow ops, over variables named by the official keys.

Exported modules run this graph rather than the Keras model: their `tf.Variable`s then carry
the official checkpoint names (`resnet/block1/unit01/a/standardized_conv2d/kernel`, ...) like
the published BiT TF-Hub modules, and a loaded module needs neither Keras nor bit_tf.
`tests/test_hub_module.py` checks it against the Keras model to 1e-5.

Example:
    >>> forward = BitForward(official_arrays(model))
    >>> features = forward.features(images)    # [batch, 2048 * width], the pre-logits
    >>> logits = forward.logits(features)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bit_tf import fused
from bit_tf.hub import describe_layout
from bit_tf.layers import GROUP_NORM_EPSILON, STANDARDIZATION_EPSILON, favours_matrix_product
from bit_tf.layers import GROUP_NORM_GROUPS as GROUPS
from bit_tf.weights import HEAD_BIAS, HEAD_KERNEL


def standardize_kernel(kernel):
    """Weight standardization as in BiT: per output channel, mean 0 and variance 1."""
    mean = tf.reduce_mean(kernel, axis=(0, 1, 2), keepdims=True)
    variance = tf.reduce_mean(tf.square(kernel - mean), axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) * tf.math.rsqrt(variance + STANDARDIZATION_EPSILON)


def fold_weight_standardization(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Standardizes every kernel once; the result uses plain convolutions (for inference).

    Keys `.../standardized_conv2d/kernel` become `.../conv2d/kernel` holding the standardized
    kernel, so a forward pass over the result gives the same outputs without computing the
    standardization at every call.

    Example:
        >>> folded = fold_weight_standardization(official_arrays(model))
        >>> "resnet/root_block/conv2d/kernel" in folded
        True
    """
    folded = {}
    for key, value in arrays.items():
        if key.endswith("standardized_conv2d/kernel"):
            standardized = standardize_kernel(tf.constant(value, tf.float32)).numpy()
            folded[key.replace("standardized_conv2d/kernel", "conv2d/kernel")] = standardized
        else:
            folded[key] = value
    return folded


class BitForward(tf.Module):
    """Holds one `tf.Variable` per official key and computes BiT's forward pass with them.

    Args:
        arrays: official key -> array, from `bit_tf.weights.official_arrays` or an `.npz`.
        trainable: whether the variables are trainable (False for serving exports).

    Example:
        >>> forward = BitForward(official_arrays(model))
        >>> forward.weights["resnet/group_norm/gamma"].name
        'resnet/group_norm/gamma:0'
    """

    def __init__(self, arrays: dict[str, np.ndarray], trainable: bool = True):
        super().__init__(name=None)
        self.layout = describe_layout({key: np.shape(value) for key, value in arrays.items()})
        if self.layout["normalization"] == "batch":
            raise ValueError(
                "Exporting BiT models with batch normalization is not supported: hub modules "
                "of this package use the GroupNorm (or no-norm) layout of the released BiT "
                "checkpoints. Export a model built with normalization='group'."
            )
        self.weights = {
            key: tf.Variable(np.asarray(value, np.float32), name=key, trainable=trainable)
            for key, value in sorted(arrays.items())
        }
        self.has_head = HEAD_KERNEL in self.weights
        # Serving exports run GroupNorm + ReLU as one XLA-compiled kernel (bit_tf.fused), and
        # 1x1 convolutions on few pixels as matrix products (bit_tf.layers); trainable modules
        # keep plain ops, which any TF-Hub consumer can differentiate.
        self.fused = not trainable

    def _conv(self, prefix, inputs, stride=1):
        standardized = f"{prefix}/standardized_conv2d/kernel"
        if standardized in self.weights:
            kernel = standardize_kernel(self.weights[standardized])
        else:
            kernel = self.weights[f"{prefix}/conv2d/kernel"]
        size = int(kernel.shape[0])
        if stride != 1 and size > 1:
            pad = (size - 1) // 2
            inputs = tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            padding = "VALID"
        else:
            padding = "SAME" if size > 1 else "VALID"
        if self.fused and favours_matrix_product((size,) * 2, (stride,) * 2, inputs.shape, padding):
            return fused.matrix_product_convolution(inputs, kernel, stride, padding)
        return tf.nn.conv2d(inputs, kernel, strides=stride, padding=padding)

    def _norm_relu(self, prefix, inputs):
        gamma_key = f"{prefix}/group_norm/gamma"
        if gamma_key in self.weights and self.fused:
            gamma, beta = self.weights[gamma_key], self.weights[f"{prefix}/group_norm/beta"]
            return fused.group_norm(
                inputs, gamma, beta, groups=GROUPS, epsilon=GROUP_NORM_EPSILON, relu=True
            )
        if gamma_key in self.weights:
            inputs = self._group_norm(
                inputs, self.weights[gamma_key], self.weights[f"{prefix}/group_norm/beta"]
            )
        return tf.nn.relu(inputs)

    @staticmethod
    def _group_norm(inputs, gamma, beta):
        shape = tf.shape(inputs)
        channels = inputs.shape[-1]
        grouped = tf.reshape(
            inputs, tf.stack([shape[0], shape[1], shape[2], GROUPS, channels // GROUPS])
        )
        mean, variance = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
        grouped = (grouped - mean) * tf.math.rsqrt(variance + GROUP_NORM_EPSILON)
        return tf.reshape(grouped, shape) * gamma + beta

    def _unit(self, prefix, inputs, stride):
        preactivated = self._norm_relu(f"{prefix}/a", inputs)
        if f"{prefix}/a/proj/standardized_conv2d/kernel" in self.weights or (
            f"{prefix}/a/proj/conv2d/kernel" in self.weights
        ):
            shortcut = self._conv(f"{prefix}/a/proj", preactivated, stride)
        else:
            shortcut = inputs
        if self.layout["unit"] == "bottleneck":
            outputs = self._conv(f"{prefix}/a", preactivated)
            outputs = self._conv(f"{prefix}/b", self._norm_relu(f"{prefix}/b", outputs), stride)
            outputs = self._conv(f"{prefix}/c", self._norm_relu(f"{prefix}/c", outputs))
        else:
            outputs = self._conv(f"{prefix}/a", preactivated, stride)
            outputs = self._conv(f"{prefix}/b", self._norm_relu(f"{prefix}/b", outputs))
        return outputs + shortcut

    def features(self, images):
        """Pre-logits [batch, channels] of float32 images in [0, 1], NHWC, any size."""
        x = images * 2.0 - 1.0
        x = self._conv("resnet/root_block", x, stride=2)  # pads 3 on each side
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        x = tf.nn.max_pool2d(x, 3, 2, "VALID")
        for block_index, units in enumerate(self.layout["units_per_block"]):
            for unit_index in range(units):
                stride = 2 if (block_index > 0 and unit_index == 0) else 1
                prefix = f"resnet/block{block_index + 1}/unit{unit_index + 1:02d}"
                x = self._unit(prefix, x, stride)
        x = self._norm_relu("resnet", x)
        return tf.reduce_mean(x, axis=[1, 2])

    def logits(self, features):
        """The head's logits [batch, classes] from pre-logits."""
        if not self.has_head:
            raise ValueError("This BiT forward pass has no head; export a feature vector.")
        kernel = self.weights[HEAD_KERNEL]
        kernel = tf.reshape(kernel, kernel.shape[-2:])
        return tf.matmul(features, kernel) + self.weights[HEAD_BIAS]
