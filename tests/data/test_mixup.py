"""MixUp as the authors apply it: one Beta(alpha, alpha) coefficient per batch, the batch mixed
with a permutation of itself, a new coefficient every batch, reproducible from a seed."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from bit_tf.data import pipelines as data
from bit_tf.data.mixup import beta_sample, mix_batch, mix_batches

BATCH = 16


def _coefficients_of_batch(labels: np.ndarray, own_classes: np.ndarray) -> np.ndarray:
    """The weight each mixed example keeps of its own one-hot label (1 for an example mixed with
    itself)."""
    return labels[np.arange(len(labels)), own_classes]


def test_one_coefficient_mixes_the_whole_batch_with_a_permutation_of_itself():
    images = tf.random.stateless_uniform((BATCH, 4, 4, 3), seed=[0, 1])
    labels = tf.one_hot(tf.range(BATCH), BATCH)
    mixed_images, mixed_labels = mix_batch(images, labels, 0.4, tf.constant([3, 4], tf.int64))
    mixed_labels = mixed_labels.numpy()
    own = _coefficients_of_batch(mixed_labels, np.arange(BATCH))
    partners = np.argmax(mixed_labels - np.diag(own), axis=1)
    mixed_with_another = own < 1.0
    assert mixed_with_another.sum() >= BATCH - 2, "the permutation left most examples alone"
    coefficient = own[mixed_with_another][0]
    np.testing.assert_allclose(own[mixed_with_another], coefficient, rtol=1e-6)
    # Each partner is used exactly once (a permutation), and the images mix as the labels do.
    assert sorted(partners[mixed_with_another]) == sorted(set(partners[mixed_with_another]))
    expected = mixed_labels @ images.numpy().reshape(BATCH, -1)
    np.testing.assert_allclose(mixed_images.numpy().reshape(BATCH, -1), expected, atol=1e-6)


def _pipeline_batches(seed, batches=6):
    # 64 examples, each of its own class: a mixed label shows the coefficient and the partner.
    images = np.random.default_rng(0).uniform(size=(64, 8, 8, 3)).astype("float32")
    source = data.from_arrays(images, np.arange(64), num_classes=64)
    pipeline = data.train_pipeline(source, BATCH, 8, 8, mixup_alpha=1.0, seed=seed)
    return [labels.numpy() for _, labels in pipeline.take(batches)]


def test_the_pipeline_draws_a_new_coefficient_for_every_batch_reproducibly():
    batches = _pipeline_batches(seed=7)
    coefficients = []
    for labels in batches:
        kept = np.sort(labels, axis=1)[:, -2:]  # the two weights of each mixed example
        mixed = kept[:, 0] > 0
        pairs = np.sort(kept[mixed], axis=1)
        # One coefficient per batch: every mixed example holds the same {1 - l, l}.
        np.testing.assert_allclose(pairs, np.broadcast_to(pairs[0], pairs.shape), atol=1e-6)
        coefficients.append(pairs[0, 1])
    assert len(set(np.round(coefficients, 6))) == len(coefficients), coefficients
    again = _pipeline_batches(seed=7)
    for first, second in zip(batches, again, strict=True):
        np.testing.assert_array_equal(first, second)
    other = _pipeline_batches(seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_coefficients_follow_beta_alpha_alpha(alpha):
    seeds = tf.data.Dataset.range(2000).map(lambda index: tf.stack([index, index * 7 + 1]))
    samples = np.array(list(seeds.map(lambda seed: beta_sample(alpha, seed)).as_numpy_iterator()))
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    # Kolmogorov-Smirnov on interior points: float32 rounds the many draws of Beta(0.1, 0.1)
    # within 6e-8 of 1 to exactly 1, which a test at the end points would count against it.
    points = np.linspace(0.01, 0.99, 99)
    empirical = np.searchsorted(np.sort(samples), points, side="right") / len(samples)
    distance = np.max(np.abs(empirical - scipy.stats.beta.cdf(points, alpha, alpha)))
    assert distance < 1.95 / np.sqrt(len(samples)), distance  # the 0.1% critical value


def test_a_non_positive_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha must be positive, got 0"):
        mix_batch(tf.zeros((2, 1)), tf.zeros((2, 2)), 0, tf.constant([0, 0], tf.int64))


def test_a_mixup_alpha_that_is_not_positive_is_refused_before_any_tracing():
    batches = tf.data.Dataset.from_tensors((tf.zeros((2, 4, 4, 3)), tf.one_hot([0, 1], 2)))
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"MixUp alpha must be positive, got {alpha}"):
            mix_batches(batches, alpha, seed=0)
