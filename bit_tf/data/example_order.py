"""The order a training pipeline reads its examples in: the whole dataset shuffled every epoch.

`shuffled_records` gives an endless stream of (position, record, label), where position counts
the examples of the stream from 0. Where the source allows random access
(`bit_tf.data.example_readers.Access`), epoch e is a permutation of all the examples drawn from
(seed, e) alone (`tf.random.experimental.stateless_shuffle`), so every batch mixes the classes
of a class-ordered folder as a full shuffle does, and the stream can start at any position
without reading what comes before it: a resumed run reads on from where it stopped. Only the
records are shuffled (paths, indices, encoded bytes); images are decoded afterwards.

Without random access (a TFDS dataset larger than the cache budget), encoded records go
through a shuffle buffer of at most `SHUFFLE_BUFFER_BYTES`, reshuffled every epoch from the
seed; starting at a position then reads past (without decoding) the records before it.

Example:
    >>> stream = shuffled_records(reader, np.arange(source_size), seed=0, start=0,
    ...                           cache=CachePolicy.parse("auto"), name="photos")
    >>> position, record, label = next(iter(stream))
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from bit_tf.data.encoded_cache import CachePolicy
from bit_tf.data.example_readers import ExampleReader

log = logging.getLogger(__name__)

#: The most encoded bytes a shuffle buffer holds (sources without random access).
SHUFFLE_BUFFER_BYTES = 256 << 20
#: The fewest examples such a buffer holds, whatever their size.
MIN_SHUFFLE_BUFFER = 1_000
#: Epochs without end (an endless stream stops long before).
_ENDLESS = 2**62


def epoch_permutation(size: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The permutation of range(`size`) of one epoch: a function of (seed, epoch) only.

    Example:
        >>> epoch_permutation(5, seed=0, epoch=tf.constant(0, tf.int64)).shape
        TensorShape([5])
    """
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), epoch_seed)


def shuffled_positions(size: int, seed: int, start: int = 0, epochs: int | None = None):
    """(stream position, position in the dataset) of every example, epoch after epoch, each
    epoch a fresh permutation (`epoch_permutation`), from stream position `start`; `epochs`
    epochs in all (None: endless).

    Example:
        >>> list(shuffled_positions(3, seed=0, epochs=1).as_numpy_iterator())
        [(0, 2), (1, 0), (2, 1)]
    """
    first_epoch, offset = divmod(int(start), size)
    last_epoch = _ENDLESS if epochs is None else epochs

    def one_epoch(epoch):
        first = epoch * size
        return tf.data.Dataset.zip(
            tf.data.Dataset.range(first, first + size),
            tf.data.Dataset.from_tensor_slices(epoch_permutation(size, seed, epoch)),
        )

    stream = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(one_epoch)
    return stream.skip(offset)


def shuffled_records(
    reader: ExampleReader,
    indices: np.ndarray,
    seed: int,
    start: int,
    cache: CachePolicy,
    name: str,
    epochs: int | None = None,
) -> tuple[tf.data.Dataset, callable]:
    """The examples at `indices` of `reader`, shuffled every epoch, as (position, record,
    label) from stream position `start`, and the decode function of the records.

    Example:
        >>> stream, decode = shuffled_records(reader, indices, 0, 0, policy, "photos")
    """
    access = reader.access(indices, cache)
    if access is not None:
        positions = shuffled_positions(access.size, seed, start, epochs)
        return positions.map(
            lambda position, index: (position, *access.lookup(index)),
            num_parallel_calls=tf.data.AUTOTUNE,
        ), access.decode
    return _buffered(reader, indices, seed, start, name, epochs), reader.decode


def _buffered(reader, indices, seed, start, name, epochs):
    """Records in their stored order through a byte-bounded shuffle buffer, reshuffled every
    epoch from `seed`."""
    total = reader.record_bytes(indices)
    per_record = total / max(len(indices), 1) if total else None
    buffer = len(indices)
    if per_record:
        buffer = min(buffer, max(MIN_SHUFFLE_BUFFER, int(SHUFFLE_BUFFER_BYTES // per_record)))
    else:
        buffer = min(buffer, 10 * MIN_SHUFFLE_BUFFER)
    log.info(
        "Shuffling %s through a buffer of %d encoded examples (of %d).",
        name,
        buffer,
        len(indices),
    )
    records = reader.records_in_order(indices).shuffle(
        buffer, seed=seed, reshuffle_each_iteration=True
    )
    records = records.repeat(epochs)
    stream = records.enumerate().map(lambda position, record: (position, *record))
    return stream.skip(int(start))


__all__ = [
    "MIN_SHUFFLE_BUFFER",
    "SHUFFLE_BUFFER_BYTES",
    "epoch_permutation",
    "shuffled_positions",
    "shuffled_records",
]
