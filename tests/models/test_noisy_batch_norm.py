"""NoisyBatchNormalization: Santurkar et al.'s Algorithm 1 when training, BatchNorm otherwise."""

import os

import keras
import numpy as np
import pytest
from scipy import stats

from bit_tf.models.noisy_batch_norm import NoisyBatchNormalization

N_MU, N_SIGMA, R_MU, R_SIGMA = 0.5, 1.25, 0.1, 0.1


def _observed_noise(layer, examples, channels, value=10.0):
    """Runs one training step on inputs whose batch-normalised value is exactly +a / -a.

    Every example holds +value at one spatial position and -value at the other, so the batch
    mean is 0, the batch variance value**2 and the normalised activations are +a and -a with
    a = value / sqrt(value**2 + epsilon). The layer outputs s*a + m and -s*a + m, from which the
    example's scale s and shift m are recovered.
    """
    inputs = np.empty((examples, 2, 1, channels), "float32")
    inputs[:, 0], inputs[:, 1] = value, -value
    outputs = keras.ops.convert_to_numpy(layer(inputs, training=True))
    normalised = value / np.sqrt(value**2 + layer.epsilon)
    scale = (outputs[:, 0, 0] - outputs[:, 1, 0]) / (2 * normalised)
    shift = (outputs[:, 0, 0] + outputs[:, 1, 0]) / 2
    return scale, shift  # (examples, channels) each


def test_noise_follows_algorithm_1_distributions():
    layer = NoisyBatchNormalization(seed=3)
    draws = [_observed_noise(layer, examples=2000, channels=64) for _ in range(5)]
    scale = np.concatenate([draw[0] for draw in draws], axis=1)  # 5 steps x 64 = 320 channels
    shift = np.concatenate([draw[1] for draw in draws], axis=1)

    # Per step and channel: m ~ U(mu - r_mu, mu + r_mu), so the shifts of a channel span 2 r_mu
    # around its centre mu, and the centres are U(-n_mu, n_mu).
    low, high = shift.min(axis=0), shift.max(axis=0)
    np.testing.assert_allclose(high - low, 2 * R_MU, atol=2e-3)
    assert np.all(high - low <= 2 * R_MU + 1e-5)
    channel_mean = (high + low) / 2
    assert stats.kstest(channel_mean, stats.uniform(-N_MU, 2 * N_MU).cdf).pvalue > 1e-3
    within_channel = shift - channel_mean
    assert (
        stats.kstest(within_channel.ravel()[::7], stats.uniform(-R_MU, 2 * R_MU).cdf).pvalue > 1e-3
    )

    # s ~ N(sigma, r_sigma) with sigma ~ U(1, n_sigma) per step and channel.
    channel_scale = scale.mean(axis=0)
    assert stats.kstest(channel_scale, stats.uniform(1.0, N_SIGMA - 1.0).cdf).pvalue > 1e-3
    residual = (scale - channel_scale).ravel()[::7]
    assert stats.kstest(residual, stats.norm(0.0, R_SIGMA).cdf).pvalue > 1e-3

    # The distribution changes every step: the 5 steps draw different channel means.
    per_step_means = channel_mean.reshape(5, 64)
    assert np.all(np.abs(np.diff(per_step_means, axis=0)).mean(axis=1) > 0.1)


def test_noise_is_shared_across_positions_and_independent_across_examples():
    layer = NoisyBatchNormalization(seed=0)
    inputs = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    plain = keras.layers.BatchNormalization(epsilon=layer.epsilon)
    clean = keras.ops.convert_to_numpy(plain(inputs, training=True))
    noisy = keras.ops.convert_to_numpy(layer(inputs, training=True))
    # noisy = s * clean + m with one (s, m) per example and channel: a per-(example, channel)
    # linear fit over the 16 spatial positions is exact.
    for example in (0, 7):
        for channel in (0, 5):
            x, y = clean[example, ..., channel].ravel(), noisy[example, ..., channel].ravel()
            slope, intercept = np.polyfit(x, y, 1)
            np.testing.assert_allclose(slope * x + intercept, y, atol=1e-4)
            assert 0.6 < slope < 1.6 and -0.7 < intercept < 0.7
    assert not np.allclose(noisy[0], noisy[1])


def test_inference_equals_batch_normalization_with_the_same_weights():
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(4, 5, 5, 12)).astype("float32")
    noisy = NoisyBatchNormalization(seed=0)
    plain = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    noisy.build(inputs.shape)
    plain.build(inputs.shape)
    weights = [
        rng.normal(size=12),  # gamma
        rng.normal(size=12),  # beta
        rng.normal(size=12),  # moving mean
        rng.uniform(0.5, 2.0, size=12),  # moving variance
    ]
    noisy.set_weights(weights)
    plain.set_weights(weights)
    np.testing.assert_allclose(
        noisy(inputs, training=False), plain(inputs, training=False), atol=1e-6
    )
    np.testing.assert_allclose(noisy(inputs), plain(inputs), atol=1e-6)
    # Training updates the same moving statistics as BatchNorm (noise comes after them).
    noisy(inputs, training=True)
    plain(inputs, training=True)
    np.testing.assert_allclose(noisy.moving_mean, plain.moving_mean, atol=1e-6)
    np.testing.assert_allclose(noisy.moving_variance, plain.moving_variance, atol=1e-6)
    # A frozen layer (trainable=False) uses the moving statistics and adds no noise.
    noisy.trainable = False
    plain.trainable = False
    np.testing.assert_allclose(
        noisy(inputs, training=True), plain(inputs, training=True), atol=1e-6
    )


def test_saved_model_round_trip_keeps_settings_and_outputs(tmp_path):
    import bit_tf

    model = bit_tf.resnet_v2(
        units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None, normalization="noisy_batch"
    )
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    # A training-mode call updates the moving statistics (and draws noise) in every layer.
    noisy_outputs = model(images, training=True)
    assert not np.allclose(noisy_outputs, model(images, training=True))
    path = os.path.join(tmp_path, "noisy.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    noisy_layers = [layer.norm_b for layer in restored.layers if hasattr(layer, "norm_b")]
    assert noisy_layers and all(isinstance(n, NoisyBatchNormalization) for n in noisy_layers)
    # Direct calls: the same kernels on both sides (predict may be XLA-compiled on one side
    # only, and two noisy training steps leave the network badly conditioned).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )

    layer = NoisyBatchNormalization(mean_range=0.3, scale_range=2.0, seed=7, axis=1)
    clone = NoisyBatchNormalization.from_config(layer.get_config())
    assert (clone.mean_range, clone.scale_range, clone.seed, clone.axis) == (0.3, 2.0, 7, 1)


@pytest.mark.parametrize(
    "options, message",
    [({"scale_range": 0.9}, "scale_range"), ({"mean_range": -1.0}, "mean_range")],
)
def test_invalid_ranges_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        NoisyBatchNormalization(**options)
