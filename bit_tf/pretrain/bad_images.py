"""Augmenting a pre-training stream without the images that do not decode, and saying so.

Only the decoding (with the crop window, which JPEG decoding is fused with) is guarded:
reading, parsing and label errors and errors of the rest of the augmentation still raise. Each
skipped image is reported on stderr, as "WARNING bit_tf.pretrain.data: skipped <file> (<n>
bytes, epoch <e>): <why>", with TF's own decoder message in TF's log. An epoch of an input
pipeline in which no image decodes raises `tf.errors.InvalidArgumentError` whose message
begins with `NOTHING_DECODED` ("No image of ... decoded in epoch ..."), instead of reading on
for ever. A skipped image keeps its position, so the other images keep their augmentation
seeds and clean data gives the very same stream.

Example:
    >>> batches = augment_skipping_bad_images(
    ...     records, ExampleAugmentation(seed=0, worker=0), LabelEncoder(1000),
    ...     per_replica=64, num_shards=1, source_name="/data/train", start_epoch=0,
    ...     from_epoch_start=True)
"""

from __future__ import annotations

import sys

import tensorflow as tf

from bit_tf.data.orientation import exif_orientation
from bit_tf.pretrain.augment import ExampleAugmentation, decode_and_crop, resize_and_flip
from bit_tf.pretrain.labels import LabelEncoder

#: Records decoded by one tf.data task: the per-replica batch when it is at most
#: MAX_DECODE_CHUNK (so clean data needs no extra copy), else DECODE_CHUNK.
MAX_DECODE_CHUNK = 64
DECODE_CHUNK = 32
#: How the input pipeline's error for an epoch in which no image decodes begins (the training
#: loop turns it into a `DataError`).
NOTHING_DECODED = "No image of"


def augment_skipping_bad_images(
    records: tf.data.Dataset,
    augmentation: ExampleAugmentation,
    encode_labels: LabelEncoder,
    *,
    per_replica: int,
    num_shards: int,
    source_name: str,
    start_epoch: int,
    from_epoch_start: bool,
) -> tf.data.Dataset:
    """(epoch, position, bytes, labels, name) records -> batches of `per_replica` augmented
    (image, encoded label) pairs, without the images that do not decode, which are reported.

    `start_epoch` is the epoch of the first record, and `from_epoch_start` whether the stream
    starts at that epoch's beginning (not so for a run resumed within an epoch): only an epoch
    seen whole can be found empty.

    Example:
        >>> batches = augment_skipping_bad_images(
        ...     records, augmentation, LabelEncoder(1000), per_replica=64, num_shards=1,
        ...     source_name="/data/train", start_epoch=0, from_epoch_start=True)
    """
    chunks = _augmented_chunks(records, augmentation, encode_labels, per_replica)
    stream = chunks.scan(
        (tf.constant(start_epoch, tf.int64), tf.constant(0, tf.int64), from_epoch_start),
        _skip_reporter(source_name, augmentation.worker, num_shards),
    )
    return stream.rebatch(per_replica, drop_remainder=True)


def _augmented_chunks(records, augmentation, encode_labels, per_replica):
    """(epoch, position, bytes, labels, name) records -> augmented chunks, without the
    images that do not decode (see `_augment_chunk`), in order and in parallel."""

    def seeded(epoch, position, image_bytes, labels, name):
        crop_seed, flip_seed = augmentation.seeds(epoch, position)
        return epoch, crop_seed, flip_seed, image_bytes, labels, tf.size(labels), name

    # A chunk of a whole per-replica batch needs no copy to become one (when it all decodes).
    chunk_size = per_replica if per_replica <= MAX_DECODE_CHUNK else DECODE_CHUNK
    chunks = records.map(seeded).padded_batch(chunk_size)
    return chunks.map(
        lambda *chunk: _augment_chunk(augmentation.image_size, encode_labels, chunk_size, *chunk),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _augment_chunk(
    image_size,
    encode_labels,
    chunk_size,
    epochs,
    crop_seeds,
    flip_seeds,
    encoded,
    labels,
    label_counts,
    names,
):
    """Augments a chunk of records; those whose image does not decode are left out.

    Returns (decoded: bool per record, images and encoded labels of the decoded records,
    and the records' epochs, names and byte sizes for `_skip_reporter`).

    The decoding runs in a dataset of the chunk's own, where `ignore_errors` follows the
    map that does nothing but decode (and crop) the images, and its input, the chunk in
    memory, cannot fail: errors of reading and parsing (before the chunk), of the rest of
    the augmentation and of labels (after `ignore_errors`) are never swallowed.
    """
    count = tf.shape(epochs)[0]
    orientations = exif_orientation(encoded)  # for the chunk at once: cheaper than per image
    rows = tf.data.Dataset.from_tensor_slices((tf.range(count), encoded, crop_seeds, orientations))
    decoded_rows = rows.map(
        lambda row, image_bytes, crop_seed, orientation: (
            row,
            decode_and_crop(image_bytes, crop_seed, orientation),
        )
    )
    decoded_rows = decoded_rows.ignore_errors(log_warning=True)

    def augment(row, image):
        image = resize_and_flip(image, flip_seeds[row], image_size)
        return row, image, encode_labels(labels[row][: label_counts[row]])

    nothing = tf.data.Dataset.from_tensors(
        (
            tf.zeros([0], tf.int32),
            tf.zeros([0, image_size, image_size, 3], tf.float32),
            encode_labels.none(),
        )
    )
    augmented = decoded_rows.map(augment).batch(chunk_size).concatenate(nothing)
    kept, images, encoded_labels = augmented.take(1).get_single_element()
    decoded = tf.reduce_any(tf.equal(tf.range(count)[:, None], kept[None, :]), 1)
    return decoded, images, encoded_labels, epochs, names, tf.strings.length(encoded)


def _skip_reporter(source_name: str, worker: int, num_shards: int):
    """The `scan` function over augmented chunks: reports the records that did not decode
    on stderr, and refuses an epoch of this pipeline in which no image decoded (instead of
    reading on for ever). State: the epoch, images decoded in it so far, and whether the
    stream saw that epoch from its start (not so for the first epoch of a resumed run).
    Outputs the chunk's (images, labels)."""

    def report(state, chunk):
        decoded, images, labels, epochs, names, sizes = chunk
        current_epoch, decoded_so_far, whole = state
        # A chunk holds consecutive records: epochs epochs[0] .. epochs[-1], in order.
        continues = tf.equal(epochs[0], current_epoch)
        span = tf.cast(epochs[-1] - epochs[0] + 1, tf.int32)
        per_epoch = tf.math.unsorted_segment_sum(
            tf.cast(decoded, tf.int64), tf.cast(epochs - epochs[0], tf.int32), span
        )
        per_epoch += tf.where(tf.logical_and(continues, tf.range(span) == 0), decoded_so_far, 0)
        whole_epochs = tf.concat(
            [[tf.logical_or(whole, tf.logical_not(continues))], tf.ones([span - 1], tf.bool)],
            0,
        )
        # Epochs that ended: the state's, when this chunk starts a new one, and all but the
        # last of the chunk's.
        state_epoch_empty = tf.logical_not(continues) & whole & tf.equal(decoded_so_far, 0)
        ended_empty = (tf.range(span) < span - 1) & whole_epochs & tf.equal(per_epoch, 0)
        empty_epoch = tf.where(
            state_epoch_empty,
            current_epoch,
            epochs[0] + tf.argmax(tf.cast(ended_empty, tf.int32), output_type=tf.int64),
        )

        def refuse():
            message = tf.strings.join(
                [
                    f"{NOTHING_DECODED} {source_name} decoded in epoch ",
                    tf.strings.as_string(empty_epoch),
                    f" of input pipeline {worker} of {num_shards}: every one is corrupt, "
                    "truncated, empty or not an image (each was reported as skipped). Fix "
                    "or remove them.",
                ]
            )
            with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
                return tf.constant(False)

        def warn():
            skipped = tf.logical_not(decoded)
            skipped_sizes = tf.boolean_mask(sizes, skipped)
            reasons = tf.where(
                tf.equal(skipped_sizes, 0),
                "the file is empty.",
                "not a decodable JPEG, PNG, GIF or BMP image (corrupt, truncated or "
                "another format).",
            )
            lines = tf.strings.join(
                [
                    "WARNING bit_tf.pretrain.data: skipped ",
                    tf.boolean_mask(names, skipped),
                    " (",
                    tf.strings.as_string(skipped_sizes),
                    " bytes, epoch ",
                    tf.strings.as_string(tf.boolean_mask(epochs, skipped)),
                    "): ",
                    reasons,
                ]
            )
            line = tf.strings.reduce_join(lines, separator="\n")
            with tf.control_dependencies([tf.print(line, output_stream=sys.stderr)]):
                return tf.constant(False)

        reported = tf.cond(tf.reduce_all(decoded), lambda: tf.constant(True), warn)
        with tf.control_dependencies([reported]):  # the skipped files first, then the error
            checked = tf.cond(
                state_epoch_empty | tf.reduce_any(ended_empty),
                refuse,
                lambda: tf.constant(True),
            )
        with tf.control_dependencies([checked, reported]):
            state = (
                tf.identity(epochs[-1]),
                per_epoch[-1],
                tf.identity(whole_epochs[-1]),
            )
            return state, (tf.identity(images), tf.identity(labels))

    return report
