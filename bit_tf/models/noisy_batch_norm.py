"""Noisy BatchNorm: BatchNorm followed by a time-varying random shift and scale per channel.

Santurkar et al. (2018), "How Does Batch Normalization Help Optimization?", Algorithm 1. The
experiment injects a deliberate "internal covariate shift" after every BatchNorm layer: at
every training step each channel j draws a distribution D_j^t,

    mu_j ~ U(-n_mu, n_mu),     sigma_j ~ U(1, n_sigma),

and every example i of the batch draws its own noise from it,

    m_ij ~ U(mu_j - r_mu, mu_j + r_mu),     s_ij ~ N(sigma_j, r_sigma),

which is applied to the batch-normalised activation: a_ij <- s_ij * a_ij + m_ij (one draw per
example and channel, shared by all spatial positions). The paper's constants are
n_mu = 0.5, n_sigma = 1.25, r_mu = r_sigma = 0.1. At inference the layer is exactly
`keras.layers.BatchNormalization`.

Only `keras` and `keras.ops` are used here, so the layer runs on every Keras 3 backend.

Example:
    >>> import numpy as np
    >>> from bit_tf.models.noisy_batch_norm import NoisyBatchNormalization
    >>> layer = NoisyBatchNormalization(seed=0)
    >>> images = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> noisy = layer(images, training=True)  # shifted and scaled per example and channel
    >>> clean = layer(images, training=False)  # plain BatchNorm with the moving statistics
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bit_tf")
class NoisyBatchNormalization(keras.layers.BatchNormalization):
    """BatchNorm with Santurkar et al.'s non-stationary noise during training.

    The noise is applied to the layer's output (after BatchNorm's own scale and offset) on
    every call in which BatchNorm uses batch statistics (`training=True` on a trainable layer);
    otherwise the layer computes exactly what `keras.layers.BatchNormalization` computes, and
    its weights (gamma, beta, moving mean and variance) are the same four variables.

    Args:
        mean_range: n_mu; the per-step channel mean mu is drawn from U(-n_mu, n_mu).
        scale_range: n_sigma; the per-step channel scale sigma is drawn from U(1, n_sigma).
        example_mean_range: r_mu; each example's shift is drawn from U(mu - r_mu, mu + r_mu).
        example_scale_stddev: r_sigma; each example's scale is drawn from N(sigma, r_sigma).
        seed: an int seed for the noise (None: a random one).
        epsilon, momentum: as in BatchNormalization; the defaults (1e-5, 0.9) match the
            builder's plain "batch" normalization so that the two are comparable.
        **kwargs: any other `keras.layers.BatchNormalization` argument.

    Example:
        >>> model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), normalization="noisy_batch")
        >>> layer = NoisyBatchNormalization(mean_range=0.5, scale_range=1.25, seed=1)
    """

    def __init__(
        self,
        mean_range: float = 0.5,
        scale_range: float = 1.25,
        example_mean_range: float = 0.1,
        example_scale_stddev: float = 0.1,
        seed: int | None = None,
        epsilon: float = 1e-5,
        momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(epsilon=epsilon, momentum=momentum, **kwargs)
        if mean_range < 0:
            raise ValueError(f"mean_range (n_mu) must be >= 0, got {mean_range!r}.")
        if scale_range < 1:
            raise ValueError(
                f"scale_range (n_sigma) must be >= 1 since sigma ~ U(1, n_sigma), got "
                f"{scale_range!r}."
            )
        if example_mean_range < 0 or example_scale_stddev < 0:
            raise ValueError(
                "example_mean_range (r_mu) and example_scale_stddev (r_sigma) must be >= 0, got "
                f"{example_mean_range!r} and {example_scale_stddev!r}."
            )
        self.mean_range = float(mean_range)
        self.scale_range = float(scale_range)
        self.example_mean_range = float(example_mean_range)
        self.example_scale_stddev = float(example_scale_stddev)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sample_noise(self, batch_size, channels: int, dtype: str = "float32"):
        """Draws one step's noise: (scale, shift), each of shape (batch_size, channels).

        Example:
            >>> scale, shift = NoisyBatchNormalization(seed=0).sample_noise(4, 8)
            >>> scale.shape, shift.shape
            ((4, 8), (4, 8))
        """
        channel_mean = keras.random.uniform(
            (1, channels),
            minval=-self.mean_range,
            maxval=self.mean_range,
            dtype=dtype,
            seed=self.seed_generator,
        )
        channel_scale = keras.random.uniform(
            (1, channels),
            minval=1.0,
            maxval=self.scale_range,
            dtype=dtype,
            seed=self.seed_generator,
        )
        shift = channel_mean + keras.random.uniform(
            (batch_size, channels),
            minval=-self.example_mean_range,
            maxval=self.example_mean_range,
            dtype=dtype,
            seed=self.seed_generator,
        )
        scale = channel_scale + self.example_scale_stddev * keras.random.normal(
            (batch_size, channels), dtype=dtype, seed=self.seed_generator
        )
        return scale, shift

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        if not (training and self.trainable):
            return outputs
        rank = len(outputs.shape)
        axis = self.axis % rank
        if axis == 0:
            raise ValueError(
                "NoisyBatchNormalization draws noise per example along axis 0, so the channel "
                f"axis cannot be 0; got axis={self.axis!r}."
            )
        channels = outputs.shape[axis]
        scale, shift = self.sample_noise(ops.shape(outputs)[0], channels, outputs.dtype)
        # (batch, channels) -> (batch, 1, ..., channels, ..., 1): one draw per example and
        # channel, shared by all other positions.
        broadcast_shape = [-1] + [1] * (rank - 1)
        broadcast_shape[axis] = channels
        scale = ops.reshape(scale, broadcast_shape)
        shift = ops.reshape(shift, broadcast_shape)
        return outputs * scale + shift

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "mean_range": self.mean_range,
            "scale_range": self.scale_range,
            "example_mean_range": self.example_mean_range,
            "example_scale_stddev": self.example_scale_stddev,
            "seed": self.seed,
        }
