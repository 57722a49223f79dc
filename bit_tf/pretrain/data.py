"""Upstream (pre-training) input: TFDS datasets, image folders and ImageNet-style TFRecords.

The pipeline is the BiT upstream one: Inception-style random crops (5%-100% of the area, aspect
ratio 3/4-4/3) resized to 224x224 and random horizontal flips; labels are class ids (softmax)
or, for multi-label data such as ImageNet-21k or JFT, multi-hot vectors (sigmoid).

For `tf.distribute`, `UpstreamInput.dataset_fn` is the function that
`strategy.distribute_datasets_from_function` calls once per input pipeline (per worker): each
worker reads only its own shard (files i, i+n, ... when there are enough files, records
otherwise) and batches for its replicas with `input_context.get_per_replica_batch_size`.

The stream is deterministic: epoch `e` of a worker is its shard shuffled with the seed
`(seed, e)`, and every example is augmented with a stateless seed made of the seed, the worker,
the epoch and its position. The input position is therefore a function of the global step:
`UpstreamInput.dataset_fn(start_step=...)` resumes the stream exactly where a run stopped,
under every strategy (tf.distribute's own iterators cannot be checkpointed).

Image folders skip images that do not decode (corrupt, truncated, zero-byte, or another format
under an image extension) where they are decoded, without decoding anything up front (TFRecords
and TFDS do so with `UpstreamInput(..., skip_bad_images=True)`): each one is reported on stderr,
as "WARNING bit_tf.pretrain.data: skipped <file> (<n> bytes, epoch <e>): <why>", with TF's own
decoder message in TF's log, and the stream goes on with the next image. An epoch of an input
pipeline in which no image decodes raises `tf.errors.InvalidArgumentError` ("No image of ...
decoded in epoch ...") instead of reading on for ever; `bit_tf.pretrain` reports it as a
`DataError` with that message. Only the decoding (with the crop window,
which JPEG decoding is fused with) is guarded: reading, parsing and label errors and errors of
the rest of the augmentation still raise. A skipped image keeps its position, so the other
images keep their augmentation seeds and clean data gives the very same stream; a run resumed
after skipped images restarts at record `start_step` x batch (skipped ones counted), which is
behind the uninterrupted stream by the number of images skipped before.

The steps are modules of their own: `bit_tf.pretrain.sources` (`open_source`: a TFDS name,
a folder of class subfolders of images, or TFRecord files), `bit_tf.pretrain.records` (a
worker's shard, epoch by epoch), `bit_tf.pretrain.augment` (`inception_crop`, seeded by
position), `bit_tf.pretrain.bad_images` (skipping and reporting images that do not decode) and
`bit_tf.pretrain.labels` (label encoding). The names this module has always offered
(`open_source`, `DataError`, `inception_crop`, `write_tfrecord`, ...) are importable from here.

Example:
    >>> source = open_source("/data/imagenet/train-*")
    >>> upstream = UpstreamInput(source, num_classes=1000, global_batch_size=4096)
    >>> distributed = strategy.distribute_datasets_from_function(upstream.dataset_fn())
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from bit_tf.pretrain.augment import (
    CROP_AREA_RANGE,
    CROP_ASPECT_RATIO_RANGE,
    DEFAULT_IMAGE_SIZE,
    ExampleAugmentation,
    inception_crop,
)
from bit_tf.pretrain.bad_images import (
    DECODE_CHUNK,
    MAX_DECODE_CHUNK,
    NOTHING_DECODED,
    augment_skipping_bad_images,
)
from bit_tf.pretrain.labels import LabelEncoder
from bit_tf.pretrain.records import epoch_records, write_tfrecord
from bit_tf.pretrain.sources import IMAGE_EXTENSIONS, DataError, Source, open_source

__all__ = [
    "CROP_AREA_RANGE",
    "CROP_ASPECT_RATIO_RANGE",
    "DECODE_CHUNK",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SHUFFLE_BUFFER",
    "IMAGE_EXTENSIONS",
    "MAX_DECODE_CHUNK",
    "NOTHING_DECODED",
    "DataError",
    "Source",
    "UpstreamInput",
    "inception_crop",
    "open_source",
    "write_tfrecord",
]

DEFAULT_SHUFFLE_BUFFER = 10_000


class UpstreamInput:
    """The per-worker input function for `strategy.distribute_datasets_from_function`.

    Args:
        source: from `open_source`.
        num_classes: the size of the model's head; labels must be below it.
        global_batch_size: the batch summed over all replicas of all workers.
        image_size: the side of the square crops (224 in BiT).
        multi_label: multi-hot float labels (sigmoid loss) instead of class ids (softmax).
        seed: the seed of shuffling and augmentation.
        shuffle_buffer: examples in the shuffle buffer of each worker.
        label_offset: added to stored labels, e.g. -1 for TFRecords whose ids start at 1.
        skip_bad_images: skip and report images that do not decode instead of failing (see
            the module docstring). Default: on for image folders; off for TFRecords and TFDS,
            whose writers normally check the images (skipping costs more input CPU, and
            keeps their stream as it was).

    Example:
        >>> upstream = UpstreamInput(open_source("imagenet2012"), 1000, 4096)
        >>> dataset = strategy.distribute_datasets_from_function(upstream.dataset_fn())
        >>> images, labels = next(iter(dataset))
    """

    def __init__(
        self,
        source: Source,
        num_classes: int,
        global_batch_size: int,
        *,
        image_size: int = DEFAULT_IMAGE_SIZE,
        multi_label: bool = False,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        label_offset: int = 0,
        skip_bad_images: bool | None = None,
    ):
        if num_classes < 1:
            raise DataError(f"num_classes must be positive, got {num_classes!r}.")
        if global_batch_size < 1:
            raise DataError(f"global_batch_size must be positive, got {global_batch_size!r}.")
        if source.kind == "folder" and num_classes < len(source.class_names):
            raise DataError(
                f"Image folder {source.name!r} has {len(source.class_names)} classes but the "
                f"model head has {num_classes}; pass --num_classes={len(source.class_names)}."
            )
        self.source = source
        self.num_classes = int(num_classes)
        self.global_batch_size = int(global_batch_size)
        self.image_size = int(image_size)
        self.multi_label = bool(multi_label)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.label_offset = int(label_offset)
        if skip_bad_images is None:
            skip_bad_images = source.kind == "folder"
        self.skip_bad_images = bool(skip_bad_images)

    def shard_size(self, num_shards: int = 1, index: int = 0) -> int:
        """Examples in one epoch of worker `index` of `num_shards` (reads the shard once).

        Example:
            >>> upstream.shard_size(num_shards=2, index=1)
            640583
        """
        if self.source.kind == "folder":
            return len(self.source.files[index::num_shards])
        return int(
            self._epoch_records(num_shards, index)(tf.constant(0, tf.int64)).reduce(
                tf.constant(0, tf.int64), lambda count, _: count + 1
            )
        )

    def dataset_fn(
        self, start_step: int = 0
    ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
        """The function for `strategy.distribute_datasets_from_function`, resuming at a step.

        Each call builds the infinite, batched stream of one input pipeline. With
        `start_step > 0` the stream skips the `start_step` batches that this worker fed to its
        replicas before (reading, not decoding, at most one epoch of its shard).

        Example:
            >>> dataset = strategy.distribute_datasets_from_function(
            ...     upstream.dataset_fn(start_step=int(optimizer.iterations)))
        """

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            num_shards = input_context.num_input_pipelines
            index = input_context.input_pipeline_id
            per_replica = input_context.get_per_replica_batch_size(self.global_batch_size)
            start_epoch, offset = self._resume_point(num_shards, index, start_step)
            records = self._positioned_records(num_shards, index, start_epoch, offset)
            augmentation = ExampleAugmentation(self.seed, index, self.image_size)
            encode_labels = self._label_encoder()
            if self.skip_bad_images:
                stream = augment_skipping_bad_images(
                    records,
                    augmentation,
                    encode_labels,
                    per_replica=per_replica,
                    num_shards=num_shards,
                    source_name=self.source.name,
                    start_epoch=start_epoch,
                    from_epoch_start=offset == 0,
                )
            else:
                stream = records.map(
                    lambda epoch, position, image_bytes, labels, _: (
                        augmentation(epoch, position, image_bytes),
                        encode_labels(labels),
                    ),
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True,
                )
                stream = stream.batch(per_replica, drop_remainder=True)
            return stream.prefetch(tf.data.AUTOTUNE)

        return dataset_fn

    def _resume_point(self, num_shards: int, index: int, start_step: int) -> tuple[int, int]:
        """(epoch, record in it) where worker `index` is after `start_step` steps."""
        consumed = int(start_step) * (self.global_batch_size // num_shards)
        if not consumed:
            return 0, 0
        size = self.shard_size(num_shards, index)
        if size == 0:
            raise DataError(f"Input pipeline {index} of {num_shards} has no examples.")
        return divmod(consumed, size)

    def _positioned_records(
        self, num_shards: int, index: int, start_epoch: int, offset: int
    ) -> tf.data.Dataset:
        """Worker `index`'s endless (epoch, position, bytes, labels, name) records, from record
        `offset` of `start_epoch` on."""
        records_of = self._epoch_records(num_shards, index)

        def one_epoch(epoch):
            records = records_of(epoch).enumerate()
            return records.map(lambda position, record: (epoch, position, *record))

        stream = tf.data.Dataset.range(start_epoch, 2**62).flat_map(one_epoch)
        return stream.skip(offset)

    def _epoch_records(self, num_shards: int, index: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
        return epoch_records(self.source, num_shards, index, self.seed, self.shuffle_buffer)

    def _label_encoder(self) -> LabelEncoder:
        return LabelEncoder(self.num_classes, self.multi_label, self.label_offset)

    def encode_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """Stored label ids -> an int32 class id, or a float32 multi-hot vector.

        Example:
            >>> UpstreamInput(source, 5, 8, multi_label=True).encode_labels(tf.constant([1, 3]))
            <tf.Tensor: shape=(5,), dtype=float32, numpy=array([0., 1., 0., 1., 0.], ...)>
        """
        return self._label_encoder()(labels)
