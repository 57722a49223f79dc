"""MixUp as the BiT authors apply it: one coefficient per batch, the batch mixed with itself.

The authors' fine-tuning code draws a single coefficient `l ~ Beta(alpha, alpha)` for each
batch and mixes every example with another example of the same batch: their PyTorch code with a
random permutation (`l * x + (1 - l) * x[randperm]`), their TF2 input pipeline with the batch in
reverse order. Keras' `MixUp` layer instead draws one coefficient per example. `mix_batch` is the
authors' rule with a random permutation; `mix_batches` applies it to a batched `tf.data` stream,
drawing a new coefficient and a new permutation for every batch from the seed and the batch's
number, so that a stream can start at any batch (a resumed run).

Example:
    >>> from bit_tf.data.mixup import mix_batches
    >>> mixed = mix_batches(batches_of_images_and_one_hot_labels, alpha=0.1, seed=0)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Folded into the seed of each batch so that the MixUp stream differs from other streams drawn
# from the same seed (the crops and flips of `bit_tf.data.train_pipeline`).
_STREAM = 0x4D495855  # "MIXU"


def beta_sample(alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """One draw of Beta(alpha, alpha), a float32 scalar, from a stateless seed (2 int64).

    Beta(a, b) is G_a / (G_a + G_b) for independent Gamma(a) and Gamma(b) draws.

    Example:
        >>> float(beta_sample(0.1, tf.constant([1, 2], tf.int64)))
        0.99...
    """
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=[alpha, alpha], dtype=tf.float32)
    total = gammas[0] + gammas[1]
    # Both Gamma draws can underflow to 0 for tiny alpha; then either example is as likely.
    return tf.where(total > 0.0, gammas[0] / tf.maximum(total, 1e-30), 0.5)


def mix_batch(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes a batch with a permutation of itself using one coefficient from Beta(alpha, alpha).

    `images` may be a structure of batches (e.g. {"student": ..., "teacher": ...}, two views of
    the same examples): each is mixed with the same coefficient and permutation.

    Returns `l * images + (1 - l) * images[permutation]` and the same for the one-hot `labels`,
    with one `l` for the whole batch; `seed` (2 int64) decides `l` and the permutation.

    Example:
        >>> mixed_images, mixed_labels = mix_batch(images, one_hot, 0.1, tf.constant([0, 1]))
    """
    if alpha <= 0:
        raise ValueError(f"MixUp alpha must be positive, got {alpha!r}.")
    seed = tf.cast(seed, tf.int64)
    coefficient_seed, permutation_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    coefficient = beta_sample(alpha, coefficient_seed)
    permutation = tf.random.experimental.stateless_shuffle(
        tf.range(tf.shape(tf.nest.flatten(images)[0])[0]), seed=permutation_seed
    )

    def mixed(values):
        weight = tf.cast(coefficient, values.dtype)
        return weight * values + (1 - weight) * tf.gather(values, permutation)

    return tf.nest.map_structure(mixed, images), mixed(labels)


def mix_batches(
    dataset: tf.data.Dataset, alpha: float, seed: int | None = None, start_batch: int = 0
) -> tf.data.Dataset:
    """Applies `mix_batch` to every (images, one-hot labels) batch of `dataset`.

    Every batch gets its own coefficient and permutation, a function of the seed and the
    batch's number in the stream (`start_batch` for the first): with the same `seed` the
    stream is the same every time, and a stream started at batch k is the tail of one started
    at 0. None gives fresh randomness.

    Example:
        >>> batches = dataset.batch(64, drop_remainder=True)
        >>> mixed = mix_batches(batches, alpha=0.1, seed=0)
    """
    if not alpha > 0:  # here, before a graph traces mix_batch
        raise ValueError(f"MixUp alpha must be positive, got {alpha!r}.")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    base = tf.constant([seed, _STREAM], tf.int64)
    numbers = tf.data.Dataset.range(int(start_batch), 2**62)

    def mix(example, number):
        images, labels = example
        pair = tf.random.experimental.stateless_fold_in(base, number)
        return mix_batch(images, labels, alpha, pair)

    return tf.data.Dataset.zip(dataset, numbers).map(mix, num_parallel_calls=tf.data.AUTOTUNE)


__all__ = ["beta_sample", "mix_batch", "mix_batches"]
