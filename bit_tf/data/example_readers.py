"""How an image source reads its examples: cheap records first, pixels only after the shuffle.

A reader gives a source's examples as records that cost little to hold and to shuffle: a
file's path (folders), an example's index (arrays), the encoded bytes of a TFDS example. Its
`decode` turns a record into float32 RGB in [0, 1] (and whether it decoded), in the parallel
map that follows the shuffle, so that no pipeline holds more decoded images than the few in
flight, whatever the size of the dataset or of its photos.

- `records_in_order(indices)`: the records of the examples at `indices`, in that order.
- `records_at(indices, cache)`: an `Access`, position -> record, for a pipeline that shuffles
  the positions of the whole dataset every epoch; folders and arrays have it by nature, TFDS
  sources once their encoded bytes are cached (`store_encoded`: in memory within the budget,
  or in a folder on a local disk); None where neither is possible (then the pipeline shuffles
  encoded records through a buffer).

Example:
    >>> reader = ArrayReader(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10) % 2)
    >>> access = reader.records_at(np.arange(10), CachePolicy.parse("auto"))
    >>> record, label = access.lookup(tf.constant(3, tf.int64))
    >>> image, decoded = access.decode(record, 0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from bit_tf.data import image_folder
from bit_tf.data.encoded_cache import CachePolicy, FileBytesCache
from bit_tf.training.atomic import write_through

log = logging.getLogger(__name__)

#: Encoded records read per step while caching them.
_STORE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Access:
    """Random access to a source's records: `lookup(position)` -> (record, label) for positions
    0 .. `size` - 1, and `decode(record, min_size)` -> (float32 image, decoded).

    `min_size` is the side the image is resized to next; a reader may decode a large JPEG at a
    reduced scale that keeps both sides at least that large (0: full size).

    Example:
        >>> access = FolderReader(scan).records_at(np.arange(10), CachePolicy.parse("auto"))
        >>> path, label = access.lookup(tf.constant(3, tf.int64))
        >>> image, decoded = access.decode(path, 448)
    """

    lookup: Callable
    decode: Callable
    size: int


class ExampleReader:
    """The interface of the readers (see the module's docstring).

    Example:
        >>> reader = source.reader   # of a bit_tf.data.ImageSource
        >>> record, label = next(iter(reader.records_in_order(source.indices)))
        >>> image, decoded = reader.decode(record)
    """

    def records_in_order(self, indices: np.ndarray) -> tf.data.Dataset:
        """(record, int32 label) of the examples at `indices`, in that order."""
        raise NotImplementedError

    def records_at(self, indices: np.ndarray, cache: CachePolicy) -> Access | None:
        """Random access to the examples at `indices`; None if there is none."""
        raise NotImplementedError

    def decode(self, record, min_size: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
        """A record as (float32 HxWx3 image in [0, 1], bool: it decoded)."""
        raise NotImplementedError

    def record_bytes(self, indices: np.ndarray) -> int | None:
        """About how many bytes the records at `indices` hold; None if unknown."""
        return None

    def access(self, indices: np.ndarray, cache: CachePolicy) -> Access | None:
        """`records_at`, made once per (indices, cache) and kept: the pipelines of one run
        (a new one for each `model.fit` call) share its cache instead of filling another."""
        key = (cache, hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest())
        made = self.__dict__.setdefault("_accesses", {})
        if key not in made:
            made[key] = self.records_at(indices, cache)
        return made[key]


def uint16_to_float(image: tf.Tensor) -> tf.Tensor:
    """uint16 on the 0-65535 scale -> float32 in [0, 1] (`bit_tf.data.image_folder.to_rgb_uint16`).

    Example:
        >>> float(uint16_to_float(tf.constant([65535], tf.uint16))[0])
        1.0
    """
    return tf.cast(image, tf.float32) / 65535.0


class ArrayReader(ExampleReader):
    """In-memory images (N, H, W, C) of uint8, uint16 or float32 in [0, 1], C of 1, 3 or 4,
    kept as given: converted to float32 RGB one example at a time, after the shuffle.

    Example:
        >>> reader = ArrayReader(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]))
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self._tensors = None

    def _images_and_labels(self):
        if self._tensors is None:
            self._tensors = (tf.constant(self.images), tf.constant(self.labels))
        return self._tensors

    def records_in_order(self, indices: np.ndarray) -> tf.data.Dataset:
        images, labels = self._images_and_labels()
        return tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64)).map(
            lambda index: (tf.gather(images, index), tf.gather(labels, index))
        )

    def records_at(self, indices: np.ndarray, cache: CachePolicy) -> Access:
        images, labels = self._images_and_labels()
        chosen = tf.constant(np.asarray(indices, np.int64))

        def lookup(position):
            index = tf.gather(chosen, position)
            return tf.gather(images, index), tf.gather(labels, index)

        return Access(lookup, self.decode, len(indices))

    def decode(self, record, min_size: int = 0):
        if record.dtype == tf.uint8:
            image = tf.cast(record, tf.float32) / 255.0
        elif record.dtype == tf.uint16:
            image = uint16_to_float(record)
        else:
            image = tf.cast(record, tf.float32)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image[..., :3], tf.constant(True)

    def record_bytes(self, indices: np.ndarray) -> int:
        return int(len(indices) * self.images[0].nbytes)


class FolderReader(ExampleReader):
    """The images of a scanned class folder (`bit_tf.data.image_folder.FolderScan`), read with
    PIL (EXIF orientation applied); records are the files' paths. A file that fails to decode
    is skipped and recorded in `scan.skipped`.

    Example:
        >>> reader = FolderReader(image_folder.scan_folder("photos/"))
    """

    def __init__(self, scan: image_folder.FolderScan, max_pixels: int = image_folder.MAX_PIXELS):
        self.scan = scan
        self.paths = np.asarray([os.fsencode(path) for path in scan.paths], dtype=object)
        self.labels = scan.labels
        self.max_pixels = max_pixels
        self.skipped = image_folder.SkippedFiles(scan.root, scan.skipped, len(scan.paths))

    def _decode_with(self, decoder: image_folder.FolderDecoder) -> Callable:
        def decode(path, min_size=0):
            image, decoded = tf.numpy_function(
                decoder, [path, tf.constant(int(min_size), tf.int64)], [tf.uint16, tf.bool]
            )
            image.set_shape([None, None, 3])
            decoded.set_shape([])
            return uint16_to_float(image), decoded

        return decode

    def decode(self, record, min_size: int = 0):
        decoder = image_folder.FolderDecoder(self.skipped, self.max_pixels)
        return self._decode_with(decoder)(record, min_size)

    def records_in_order(self, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            (self.paths[indices].astype(bytes), self.labels[indices])
        )

    def records_at(self, indices: np.ndarray, cache: CachePolicy) -> Access:
        paths = tf.constant(self.paths[indices].astype(bytes))
        labels = tf.constant(self.labels[indices])
        files = FileBytesCache.for_files(cache, self.record_bytes(indices), self.scan.root)
        decoder = image_folder.FolderDecoder(self.skipped, self.max_pixels, files.read)

        def lookup(position):
            return tf.gather(paths, position), tf.gather(labels, position)

        return Access(lookup, self._decode_with(decoder), len(indices))

    def record_bytes(self, indices: np.ndarray) -> int:
        if not len(self.paths):
            return 0
        return int(self.scan.file_bytes * len(indices) / len(self.paths))


@dataclasses.dataclass(frozen=True)
class ImageFeature:
    """What a TFDS image feature holds: encoded bytes (an `Image` feature) or pixels, their
    dtype (uint8 or uint16), and a factor some tasks scale the values by (dSprites' 0/1).

    Example:
        >>> ImageFeature(encoded=True, dtype=tf.uint8, scale=255)   # dSprites' 0/1 pixels
    """

    encoded: bool = True
    dtype: tf.DType = tf.uint8
    scale: int = 1


class TfdsReader(ExampleReader):
    """A TFDS split, read in its prepared order with the image left encoded
    (`tfds.decode.SkipDecoding`): records are (bytes, label), decoded after the shuffle as the
    authors' input pipeline does.

    Args:
        load: decoders -> the split's dataset of example dicts, in a fixed order.
        image_key: the image feature's key.
        label: example dict -> int32 label (a feature, or one derived from annotations).
        feature: the image feature's kind (`ImageFeature`).
        name: for messages and the disk cache's folder.
        bytes_per_example: the mean encoded size, where TFDS knows it.

    Example:
        >>> reader = TfdsReader(lambda decoders: tfds.load("mnist", split="train",
        ...                     decoders=decoders), "image", lambda x: x["label"],
        ...                     ImageFeature(), "mnist:train")
    """

    def __init__(
        self,
        load: Callable,
        image_key: str,
        label: Callable,
        feature: ImageFeature,
        name: str,
        bytes_per_example: float | None = None,
    ):
        self.load = load
        self.image_key = image_key
        self.label = label
        self.feature = feature
        self.name = name
        self.bytes_per_example = bytes_per_example

    def records_in_order(self, indices: np.ndarray | None) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.feature.encoded else None
        examples = self.load(decoders)
        records = examples.map(
            lambda example: (example[self.image_key], tf.cast(self.label(example), tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return records if indices is None else select(records, indices)

    def records_at(self, indices: np.ndarray, cache: CachePolicy) -> Access | None:
        if not self.feature.encoded:
            return None
        return store_encoded(self, indices, cache)

    def decode(self, record, min_size: int = 0):
        # Pixels where a dataset gives them despite SkipDecoding (some mocks, Tensor features).
        if record.dtype == tf.string:
            image = tf.io.decode_image(
                record, channels=3, dtype=self.feature.dtype, expand_animations=False
            )
        else:
            image = record
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            image = image[..., :3]
        if self.feature.scale != 1:
            image = image * tf.cast(self.feature.scale, image.dtype)
        return tf.image.convert_image_dtype(image, tf.float32), tf.constant(True)

    def record_bytes(self, indices: np.ndarray) -> int | None:
        if self.bytes_per_example is None:
            return None
        return int(self.bytes_per_example * len(indices))


class ConcatenatedReader(ExampleReader):
    """Two readers of one task read as one (VTAB's train800 + val200); the first's `decode`.

    Example:
        >>> both = ConcatenatedReader(train_reader, 800, validation_reader)
    """

    def __init__(self, first: ExampleReader, first_size: int, second: ExampleReader):
        self.first, self.first_size, self.second = first, first_size, second
        self.name = f"{getattr(first, 'name', 'first')} + {getattr(second, 'name', 'second')}"

    def _split(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return indices[indices < self.first_size], indices[indices >= self.first_size]

    def records_in_order(self, indices: np.ndarray) -> tf.data.Dataset:
        first, second = self._split(indices)
        return self.first.records_in_order(first).concatenate(
            self.second.records_in_order(second - self.first_size)
        )

    def records_at(self, indices: np.ndarray, cache: CachePolicy) -> Access | None:
        return store_encoded(self, np.sort(np.asarray(indices, np.int64)), cache)

    def decode(self, record, min_size: int = 0):
        return self.first.decode(record, min_size)

    def record_bytes(self, indices: np.ndarray) -> int | None:
        first, second = self._split(indices)
        sizes = (self.first.record_bytes(first), self.second.record_bytes(second))
        return None if None in sizes else sum(sizes)


def select(records: tf.data.Dataset, indices: np.ndarray) -> tf.data.Dataset:
    """The elements of `records` at the sorted, distinct `indices`, reading past the others.

    Example:
        >>> list(select(tf.data.Dataset.range(10), np.array([2, 5])).as_numpy_iterator())
        [2, 5]
    """
    indices = np.asarray(indices, np.int64)
    if not len(indices):
        return records.take(0)
    chosen = np.zeros(int(indices[-1]) + 1, dtype=bool)
    chosen[indices] = True
    chosen = tf.constant(chosen)
    return (
        records.take(len(chosen))
        .enumerate()
        .filter(lambda index, _: chosen[index])
        .map(lambda _, record: record)
    )


def store_encoded(reader: ExampleReader, indices: np.ndarray, cache: CachePolicy) -> Access | None:
    """Random access to `reader`'s encoded records at `indices` through a cache of their
    bytes: in memory when they fit the policy's budget, in its folder for a disk cache; None
    otherwise (nothing is read then, when the reader knows the size in advance).

    Example:
        >>> access = store_encoded(tfds_reader, np.arange(1000), CachePolicy.parse("auto"))
    """
    name = getattr(reader, "name", "the source")
    if cache.kind == "disk":
        return _disk_store(reader, indices, cache.folder, name)
    if cache.kind == "none":
        return None
    expected = reader.record_bytes(indices)
    if expected is not None and expected > cache.budget:
        log.info(
            "Not caching %s: about %.1f MB of encoded images is more than the %.1f MB limit; "
            "its examples are shuffled through a buffer (cache=<folder on a local disk> gives "
            "a whole shuffle).",
            name,
            expected / 1e6,
            cache.budget / 1e6,
        )
        return None
    return _memory_store(reader, indices, cache.budget, name)


def _memory_store(reader, indices, budget: int, name: str) -> Access | None:
    encoded, labels, total = [], [], 0
    records = reader.records_in_order(indices)
    if records.element_spec[0].dtype != tf.string:
        return None
    batches = records.batch(_STORE_BATCH)
    for batch_records, batch_labels in batches.as_numpy_iterator():
        total += sum(len(record) for record in batch_records)
        if total > budget:
            log.info(
                "Not caching %s: its encoded images are more than the %.1f MB limit; its "
                "examples are shuffled through a buffer.",
                name,
                budget / 1e6,
            )
            return None
        encoded.extend(batch_records)
        labels.append(batch_labels)
    log.info(
        "Caching the %d encoded images of %s in memory (%.1f MB); decoded images are never cached.",
        len(encoded),
        name,
        total / 1e6,
    )
    records = tf.constant(np.asarray(encoded, dtype=object))
    labels = tf.constant(np.concatenate(labels) if labels else np.zeros([0], np.int32))

    def lookup(position):
        return tf.gather(records, position), tf.gather(labels, position)

    return Access(lookup, reader.decode, len(encoded))


def _disk_store(reader, indices, folder: str, name: str) -> Access | None:
    digest = hashlib.sha256(name.encode() + np.asarray(indices, np.int64).tobytes()).hexdigest()
    store = os.path.join(folder, digest[:32])
    labels_path = os.path.join(store, "labels.npy")
    if not os.path.exists(labels_path):
        records = reader.records_in_order(indices)
        if records.element_spec[0].dtype != tf.string:
            return None
        os.makedirs(store, exist_ok=True)
        labels, position = [], 0
        batches = records.batch(_STORE_BATCH)
        for batch_records, batch_labels in batches.as_numpy_iterator():
            for record in batch_records:
                with open(os.path.join(store, f"{position}.bin"), "wb") as file:
                    file.write(record)
                position += 1
            labels.append(batch_labels)
        labels = np.concatenate(labels) if labels else np.zeros([0], np.int32)
        # The store is complete once its labels are there.
        write_through(labels_path, lambda partial: np.save(partial, labels), suffix=".npy")
    log.info("Caching the encoded images of %s in %s.", name, store)
    labels = np.load(labels_path)
    paths = tf.constant([os.path.join(store, f"{index}.bin") for index in range(len(labels))])
    labels = tf.constant(labels)

    def lookup(position):
        return tf.gather(paths, position), tf.gather(labels, position)

    def decode(path, min_size=0):
        return reader.decode(tf.io.read_file(path), min_size)

    return Access(lookup, decode, len(labels) if len(labels) else 0)


__all__ = [
    "Access",
    "ArrayReader",
    "ConcatenatedReader",
    "ExampleReader",
    "FolderReader",
    "ImageFeature",
    "TfdsReader",
    "select",
    "store_encoded",
    "uint16_to_float",
]
