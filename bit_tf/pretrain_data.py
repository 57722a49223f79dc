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
as "WARNING bit_tf.pretrain_data: skipped <file> (<n> bytes, epoch <e>): <why>", with TF's own
decoder message in TF's log, and the stream goes on with the next image. An epoch of an input
pipeline in which no image decodes raises `tf.errors.InvalidArgumentError` ("No image of ...
decoded in epoch ...") instead of reading on for ever; `bit_tf.pretrain` reports it as a
`DataError` with that message. Only the decoding (with the crop window,
which JPEG decoding is fused with) is guarded: reading, parsing and label errors and errors of
the rest of the augmentation still raise. A skipped image keeps its position, so the other
images keep their augmentation seeds and clean data gives the very same stream; a run resumed
after skipped images restarts at record `start_step` x batch (skipped ones counted), which is
behind the uninterrupted stream by the number of images skipped before.

Sources (`open_source`):

- a TFDS name, e.g. "imagenet2012" or "imagenet2012:5.1.0" (`data_dir` is the TFDS folder);
- a folder of class subfolders of images (`root/cat/001.jpg`): labels are the sorted folder
  names' indices;
- TFRecord files of `tf.train.Example`s with `image/encoded` (JPEG/PNG bytes) and
  `image/class/label` (an int, or a list of ints for multi-label data): a file, a directory of
  files, or a glob such as "/data/imagenet/train-*".

Example:
    >>> source = open_source("/data/imagenet/train-*")
    >>> upstream = UpstreamInput(source, num_classes=1000, global_batch_size=4096)
    >>> distributed = strategy.distribute_datasets_from_function(upstream.dataset_fn())
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: Inception crop: fraction of the image area, and aspect ratio range (big_vision's defaults).
CROP_AREA_RANGE = (0.05, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
DEFAULT_IMAGE_SIZE = 224
DEFAULT_SHUFFLE_BUFFER = 10_000
#: Records decoded by one tf.data task (see `UpstreamInput.dataset_fn`): the per-replica batch
#: when it is at most MAX_DECODE_CHUNK (so clean data needs no extra copy), else DECODE_CHUNK.
MAX_DECODE_CHUNK = 64
DECODE_CHUNK = 32
#: How the input pipeline's error for an epoch in which no image decodes begins (the training
#: loop turns it into a `DataError`).
NOTHING_DECODED = "No image of"
_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.VarLenFeature(tf.int64),
}


class DataError(ValueError):
    """The dataset cannot be found or read, or its labels do not fit the model."""


@dataclasses.dataclass
class Source:
    """Where the examples come from; made by `open_source`.

    Attributes:
        kind: "tfds", "folder" or "tfrecord".
        name: the TFDS name, folder, or file pattern as given.
        files: TFRecord files or image files (sorted); empty for TFDS.
        labels: class ids of `files` (folders only).
        class_names: the sorted subfolder names (folders only).
        data_dir: TFDS data folder.
        split: TFDS split.
    """

    kind: str
    name: str
    files: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    class_names: list = dataclasses.field(default_factory=list)
    data_dir: str | None = None
    split: str = "train"

    def num_examples(self) -> int:
        """The number of training examples (reads every TFRecord once if it must count).

        Example:
            >>> open_source("/data/flowers").num_examples()
            3670
        """
        if self.kind == "folder":
            return len(self.files)
        if self.kind == "tfds":
            import tensorflow_datasets as tfds

            builder = tfds.builder(self.name, data_dir=self.data_dir)
            return int(builder.info.splits[self.split].num_examples)
        return int(
            tf.data.TFRecordDataset(self.files).reduce(
                tf.constant(0, tf.int64), lambda count, _: count + 1
            )
        )


def _is_tfrecord_folder(path: str) -> bool:
    entries = tf.io.gfile.listdir(path)
    has_folders = any(tf.io.gfile.isdir(os.path.join(path, entry)) for entry in entries)
    return bool(entries) and not has_folders


def open_source(dataset: str, data_dir: str | None = None, split: str = "train") -> Source:
    """Resolves `--dataset`: an image folder, TFRecord files, or a TFDS name.

    Raises:
        DataError: nothing matches, an image folder has no images, or a class folder is empty.

    Example:
        >>> open_source("imagenet2012", data_dir="/data/tfds").kind
        'tfds'
    """
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"--dataset must name a TFDS dataset, a folder or files, got {dataset!r}.")
    if tf.io.gfile.isdir(dataset):
        if _is_tfrecord_folder(dataset):
            files = sorted(
                os.path.join(dataset, entry)
                for entry in tf.io.gfile.listdir(dataset)
                if not entry.startswith(".")
            )
            return Source("tfrecord", dataset, files=files)
        return _folder_source(dataset)
    if any(character in dataset for character in "*?[") or tf.io.gfile.exists(dataset):
        files = sorted(tf.io.gfile.glob(dataset))
        if not files:
            raise DataError(f"No TFRecord files match {dataset!r}; check the path or pattern.")
        return Source("tfrecord", dataset, files=files)
    if os.sep in dataset:
        raise DataError(
            f"Dataset path {dataset!r} does not exist. Pass an image folder, TFRecord files "
            "(a file, folder or glob), or a TFDS name such as 'imagenet2012'."
        )
    return Source("tfds", dataset, data_dir=data_dir, split=split)


def _folder_source(root: str) -> Source:
    class_names = sorted(
        entry.rstrip("/")
        for entry in tf.io.gfile.listdir(root)
        if tf.io.gfile.isdir(os.path.join(root, entry)) and not entry.startswith(".")
    )
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        images = sorted(
            os.path.join(folder, entry)
            for entry in tf.io.gfile.listdir(folder)
            if entry.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not images:
            raise DataError(
                f"Class folder {folder!r} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images."
            )
        files += images
        labels += [label] * len(images)
    if not files:
        raise DataError(f"Image folder {root!r} has no class subfolders with images.")
    return Source("folder", root, files=files, labels=labels, class_names=class_names)


def inception_crop(
    image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int = DEFAULT_IMAGE_SIZE
) -> tf.Tensor:
    """Decodes JPEG/PNG bytes, takes a random Inception-style crop, resizes and flips it.

    Deterministic given `seed` (a stateless seed, shape [2]). Returns float32 in [0, 1],
    shape (image_size, image_size, 3). Bytes that do not decode raise
    `tf.errors.InvalidArgumentError` (`UpstreamInput` skips such images).

    Example:
        >>> image = inception_crop(tf.io.read_file("cat.jpg"), tf.constant([1, 2]), 224)
    """
    crop_seed, flip_seed = _crop_and_flip_seeds(seed)
    return _resize_and_flip(_decode_and_crop(image_bytes, crop_seed), flip_seed, image_size)


def _crop_and_flip_seeds(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


def _decode_and_crop(image_bytes: tf.Tensor, crop_seed: tf.Tensor) -> tf.Tensor:
    """The decoding half of `inception_crop`: uint8 pixels of the random crop window.

    JPEGs decode only the window (`decode_and_crop_jpeg`), so the window is drawn here too.
    """

    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=crop_seed,
            area_range=CROP_AREA_RANGE,
            aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
            min_object_covered=0.0,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, size

    def crop_jpeg():
        begin, size = window(tf.image.extract_jpeg_shape(image_bytes))
        crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)

    def crop_other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        begin, size = window(tf.shape(image))
        return tf.slice(image, begin, size)

    return tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)


def _resize_and_flip(image: tf.Tensor, flip_seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """The rest of `inception_crop`: uint8 crop -> float32 [0, 1], resized, maybe flipped."""
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (image_size, image_size))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


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
            whose writers normally check the images (skipping costs a few percent more input
            CPU, and keeps their stream as it was).

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

    # -- one worker's shard, one epoch, as (image bytes, label ids) ----------------------------

    def _shard_records(self, num_shards: int, index: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Returns epoch -> this worker's (bytes, labels, name) records of that epoch, shuffled.

        `name` says where a record comes from in warnings: the image's path for folders.

        Orders are stateless functions of (seed, epoch): the file list (or, for folders, the
        image list) is permuted with `stateless_shuffle`, and records go through a shuffle
        buffer with a fixed seed, so no op depends on TensorFlow's global seed.
        """
        source = self.source
        seed = self.seed
        buffer_seed = seed * 1_000_003 + index
        if source.kind == "folder":
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

        all_files, parse = source.files, _parse_example
        if source.kind == "tfds":
            all_files, parse = self._tfds_files_and_parser()
        by_file = len(all_files) >= num_shards
        files = tf.constant(all_files[index::num_shards] if by_file else all_files)
        cycle_length = max(1, min(16, len(all_files)))
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
            if self.shuffle_buffer > 1:
                records = records.shuffle(self.shuffle_buffer, seed=buffer_seed)
            return records.map(parse_named)

        return tfrecord_epoch

    def _tfds_files_and_parser(self):
        import tensorflow_datasets as tfds

        source = self.source
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

    # -- the public input function -----------------------------------------------------------

    def shard_size(self, num_shards: int = 1, index: int = 0) -> int:
        """Examples in one epoch of worker `index` of `num_shards` (reads the shard once).

        Example:
            >>> upstream.shard_size(num_shards=2, index=1)
            640583
        """
        if self.source.kind == "folder":
            return len(self.source.files[index::num_shards])
        return int(
            self._shard_records(num_shards, index)(tf.constant(0, tf.int64)).reduce(
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
            per_worker = self.global_batch_size // num_shards
            epoch_records = self._shard_records(num_shards, index)
            start_epoch, offset = 0, 0
            consumed = int(start_step) * per_worker
            if consumed:
                size = self.shard_size(num_shards, index)
                if size == 0:
                    raise DataError(f"Input pipeline {index} of {num_shards} has no examples.")
                start_epoch, offset = divmod(consumed, size)

            def one_epoch(epoch):
                records = epoch_records(epoch).enumerate()
                return records.map(lambda position, record: (epoch, position, *record))

            stream = tf.data.Dataset.range(start_epoch, 2**62).flat_map(one_epoch)
            stream = stream.skip(offset)
            if self.skip_bad_images:
                stream = self._skipping_bad_images(stream, index, num_shards, per_replica)
                stream = stream.scan(
                    (tf.constant(start_epoch, tf.int64), tf.constant(0, tf.int64), offset == 0),
                    self._skip_reporter(index, num_shards),
                )
                stream = stream.rebatch(per_replica, drop_remainder=True)
            else:
                stream = stream.map(
                    lambda epoch, position, image_bytes, labels, _: self._example(
                        index, epoch, position, image_bytes, labels
                    ),
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True,
                )
                stream = stream.batch(per_replica, drop_remainder=True)
            return stream.prefetch(tf.data.AUTOTUNE)

        return dataset_fn

    def _seeds(self, worker, epoch, position):
        """The (crop, flip) stateless seeds of the record at `position` of `epoch`."""
        seed = tf.stack(
            [
                tf.cast(self.seed, tf.int64) * 1_000_003 + tf.cast(worker, tf.int64),
                tf.cast(epoch, tf.int64) * 2**32 + tf.cast(position, tf.int64),
            ]
        )
        return _crop_and_flip_seeds(seed)

    def _example(self, worker, epoch, position, image_bytes, labels):
        crop_seed, flip_seed = self._seeds(worker, epoch, position)
        image = _decode_and_crop(image_bytes, crop_seed)
        return _resize_and_flip(image, flip_seed, self.image_size), self.encode_labels(labels)

    def _skipping_bad_images(self, records, worker, num_shards, per_replica):
        """(epoch, position, bytes, labels, name) records -> augmented chunks, without the
        images that do not decode (see `_augment_chunk`), in order and in parallel."""

        def seeded(epoch, position, image_bytes, labels, name):
            crop_seed, flip_seed = self._seeds(worker, epoch, position)
            return epoch, crop_seed, flip_seed, image_bytes, labels, tf.size(labels), name

        # A chunk of a whole per-replica batch needs no copy to become one (when it all decodes).
        chunk_size = per_replica if per_replica <= MAX_DECODE_CHUNK else DECODE_CHUNK
        chunks = records.map(seeded).padded_batch(chunk_size)
        return chunks.map(
            lambda *chunk: self._augment_chunk(chunk_size, *chunk),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def _augment_chunk(
        self, chunk_size, epochs, crop_seeds, flip_seeds, encoded, labels, label_counts, names
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
        rows = tf.data.Dataset.from_tensor_slices((tf.range(count), encoded, crop_seeds))
        decoded_rows = rows.map(
            lambda row, image_bytes, crop_seed: (row, _decode_and_crop(image_bytes, crop_seed))
        )
        decoded_rows = decoded_rows.ignore_errors(log_warning=True)

        def augment(row, image):
            image = _resize_and_flip(image, flip_seeds[row], self.image_size)
            return row, image, self.encode_labels(labels[row][: label_counts[row]])

        label_shape = [0, self.num_classes] if self.multi_label else [0]
        nothing = tf.data.Dataset.from_tensors(
            (
                tf.zeros([0], tf.int32),
                tf.zeros([0, self.image_size, self.image_size, 3], tf.float32),
                tf.zeros(label_shape, tf.float32 if self.multi_label else tf.int32),
            )
        )
        augmented = decoded_rows.map(augment).batch(chunk_size).concatenate(nothing)
        kept, images, encoded_labels = augmented.take(1).get_single_element()
        decoded = tf.reduce_any(tf.equal(tf.range(count)[:, None], kept[None, :]), 1)
        return decoded, images, encoded_labels, epochs, names, tf.strings.length(encoded)

    def _skip_reporter(self, worker: int, num_shards: int):
        """The `scan` function over augmented chunks: reports the records that did not decode
        on stderr, and refuses an epoch of this pipeline in which no image decoded (instead of
        reading on for ever). State: the epoch, images decoded in it so far, and whether the
        stream saw that epoch from its start (not so for the first epoch of a resumed run).
        Outputs the chunk's (images, labels)."""
        source_name = self.source.name

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
                        "WARNING bit_tf.pretrain_data: skipped ",
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

    def encode_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """Stored label ids -> an int32 class id, or a float32 multi-hot vector.

        Example:
            >>> UpstreamInput(source, 5, 8, multi_label=True).encode_labels(tf.constant([1, 3]))
            <tf.Tensor: shape=(5,), dtype=float32, numpy=array([0., 1., 0., 1., 0.], ...)>
        """
        labels = tf.cast(labels, tf.int64) + self.label_offset
        checks = [
            tf.debugging.assert_non_negative(
                labels, message=f"A label is negative (label_offset={self.label_offset})."
            ),
            tf.debugging.assert_less(
                labels,
                tf.cast(self.num_classes, tf.int64),
                message=f"A label is out of range for a head of {self.num_classes} classes; "
                "pass the right --num_classes (or --label_offset=-1 for ids that start at 1).",
            ),
        ]
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
        if self.multi_label:
            hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
            return tf.reduce_max(tf.concat([hot, tf.zeros([1, self.num_classes])], 0), axis=0)
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.size(labels),
                    1,
                    message="An example has several labels (or none); multi-label data needs "
                    "--multi_label.",
                )
            ]
        ):
            return tf.cast(tf.reshape(labels, [-1])[0], tf.int32)


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

    Example:
        >>> write_tfrecord("train-00000", [(jpeg_bytes, 3), (png_bytes, [1, 7])])
        'train-00000'
    """
    with tf.io.TFRecordWriter(path) as writer:
        for image_bytes, labels in examples:
            labels = [int(labels)] if isinstance(labels, int) else [int(x) for x in labels]
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/encoded": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[image_bytes])
                        ),
                        "image/class/label": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=labels)
                        ),
                    }
                )
            )
            writer.write(example.SerializeToString())
    return path
