"""Reading one input pipeline's shard of a pre-training `Source`, one epoch at a time.

`epoch_records` gives, for worker `index` of `num_shards`, the function epoch -> that epoch's
(image bytes, label ids, name) records, shuffled. A worker reads files index, index + n, ...
when there are at least as many files as workers (images, for folders), and every n-th record
otherwise. Orders are stateless functions of (seed, epoch): the file (or image) list is
permuted with `stateless_shuffle`, and records go through a shuffle buffer with a fixed seed,
so no op depends on TensorFlow's global seed.

TFRecords hold `tf.train.Example`s with `image/encoded` (JPEG/PNG bytes) and
`image/class/label` (an int, or a list of ints for multi-label data); `write_tfrecord` writes
them. TFDS datasets are read from their prepared files, their images left undecoded.

Example:
    >>> records_of = epoch_records(open_source("/data/train-*"), 2, 0, seed=0, shuffle_buffer=0)
    >>> image_bytes, labels, name = next(iter(records_of(tf.constant(0, tf.int64))))
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tensorflow as tf

from bit_tf.pretrain.sources import DataError, Source
from bit_tf.training.atomic import write_through

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.VarLenFeature(tf.int64),
}


def epoch_records(
    source: Source, num_shards: int, index: int, seed: int, shuffle_buffer: int
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Returns epoch -> worker `index`'s (bytes, labels, name) records of that epoch, shuffled.

    `name` says where a record comes from in warnings: the image's path for folders.

    Raises:
        DataError: a folder with fewer images than workers, or a TFDS split with no files.

    Example:
        >>> records_of = epoch_records(source, num_shards=1, index=0, seed=0,
        ...                            shuffle_buffer=10_000)
        >>> size = records_of(tf.constant(0, tf.int64)).cardinality()
    """
    if source.kind == "folder":
        return _folder_epochs(source, num_shards, index, seed)
    return _tfrecord_epochs(source, num_shards, index, seed, shuffle_buffer)


def _folder_epochs(
    source: Source, num_shards: int, index: int, seed: int
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """A folder's images index, index + n, ..., in an order of their own each epoch."""
    files = source.files[index::num_shards]
    labels = source.labels[index::num_shards]
    if not files:
        raise DataError(
            f"Image folder {source.name!r} has {len(source.files)} images, fewer than "
            f"the {num_shards} input pipelines."
        )
    files_tensor = tf.constant(files)
    labels_tensor = tf.constant([[label] for label in labels], tf.int64)

    def folder_epoch(epoch):
        order = _permutation(len(files), seed, epoch)
        pairs = tf.data.Dataset.from_tensor_slices(
            (tf.gather(files_tensor, order), tf.gather(labels_tensor, order))
        )
        return pairs.map(lambda path, label: (tf.io.read_file(path), label, path))

    return folder_epoch


def _tfrecord_epochs(
    source: Source, num_shards: int, index: int, seed: int, shuffle_buffer: int
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """TFRecord (or TFDS) files interleaved in an order of their own each epoch, by file or by
    record, through a seeded shuffle buffer."""
    all_files, parse = source.files, _parse_example
    if source.kind == "tfds":
        all_files, parse = tfds_files_and_parser(source)
    by_file = len(all_files) >= num_shards
    files = tf.constant(all_files[index::num_shards] if by_file else all_files)
    cycle_length = max(1, min(16, len(all_files)))
    buffer_seed = seed * 1_000_003 + index
    record_name = tf.constant(
        f"a record of {source.name!r}" + (f" ({source.split})" if source.kind == "tfds" else "")
    )

    def parse_named(serialized):
        image_bytes, labels = parse(serialized)
        return image_bytes, labels, record_name

    def tfrecord_epoch(epoch):
        order = _permutation(int(files.shape[0]), seed, epoch)
        records = tf.data.Dataset.from_tensor_slices(tf.gather(files, order)).interleave(
            tf.data.TFRecordDataset,
            cycle_length=cycle_length,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if not by_file:
            records = records.shard(num_shards, index)
        if shuffle_buffer > 1:
            records = records.shuffle(shuffle_buffer, seed=buffer_seed)
        return records.map(parse_named)

    return tfrecord_epoch


def tfds_files_and_parser(
    source: Source,
) -> tuple[list[str], Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]]:
    """The prepared files of a TFDS split, and serialized example -> (image bytes, label ids).

    Raises:
        DataError: the split has no files (the dataset is not prepared).

    Example:
        >>> files, parse = tfds_files_and_parser(open_source("imagenet2012"))
        >>> image_bytes, labels = parse(next(iter(tf.data.TFRecordDataset(files[:1]))))
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(source.name, data_dir=source.data_dir)
    split_info = builder.info.splits[source.split]
    files = sorted(os.fspath(path) for path in split_info.filepaths)
    if not files:
        raise DataError(
            f"TFDS dataset {source.name!r} split {source.split!r} has no files under "
            f"{builder.data_dir!r}; prepare it first (tfds build {source.name})."
        )
    features = builder.info.features
    label_key = "label" if "label" in features else "labels"
    decoders = {"image": tfds.decode.SkipDecoding()}

    def parse(serialized):
        example = features.deserialize_example(serialized, decoders=decoders)
        labels = tf.reshape(tf.cast(example[label_key], tf.int64), [-1])
        return example["image"], labels

    return files, parse


def _permutation(size: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """A stateless random permutation of range(size) for one epoch."""
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(size), seed=epoch_seed)


def _parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    features = tf.io.parse_single_example(serialized, _FEATURES)
    labels = tf.sparse.to_dense(features["image/class/label"])
    return features["image/encoded"], labels


def write_tfrecord(path: str, examples) -> str:
    """Writes (encoded image bytes, label or list of labels) pairs as ImageNet-style Examples.

    The records go to a temporary sibling of `path`, renamed onto it once all are written
    (`bit_tf.training.atomic`): `path` holds every record or is left as it was.

    Example:
        >>> write_tfrecord("train-00000", [(jpeg_bytes, 3), (png_bytes, [1, 7])])
        'train-00000'
    """

    def write(temporary: str) -> None:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image_bytes, labels in examples:
                writer.write(_example(image_bytes, labels).SerializeToString())

    return write_through(path, write)


def _example(image_bytes: bytes, labels) -> tf.train.Example:
    """The `tf.train.Example` of one image and its label or labels."""
    labels = [int(labels)] if isinstance(labels, int) else [int(x) for x in labels]
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[image_bytes])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=labels)),
            }
        )
    )
