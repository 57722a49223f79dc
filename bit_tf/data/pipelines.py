"""tf.data input pipelines for fine-tuning: from a source to (images in [0, 1], one-hot labels).

A source (`ImageSource`) is a labelled collection whose size and classes are known before
training, as the BiT-HyperRule needs them. Sources come from a TFDS name (`from_tfds`), a folder
with one subfolder per class (`from_folder`), in-memory arrays (`from_arrays`), or the embedded
default, scikit-learn's handwritten digits (`load_digits`). `few_shot` and `split` select
examples deterministically.

Memory does not grow with the data. A source reads cheap records (file paths, indices, the
encoded bytes of TFDS examples; `bit_tf.data.example_readers`), and `train_pipeline` shuffles those
over the whole dataset every epoch, a fresh permutation from (seed, epoch)
(`bit_tf.data.example_order`), and only then decodes, resizes to `resize`, random-crops to `crop`
and flips horizontally (crops and flips can be turned off per task), in parallel; it batches
and applies MixUp with one coefficient per batch, as the authors do (`bit_tf.data.mixup`). Every
batch mixes the classes as a full shuffle does, also for a folder read class by class. Encoded
bytes are cached (in memory within a budget, or in a folder on a local disk;
`bit_tf.data.encoded_cache`), decoded images never. Each random choice is a function of the seed and
the example's position in the stream, so `start_batch` starts a pipeline exactly where a run
that stopped after that many batches was.
`eval_pipeline` resizes to `crop`, as the authors evaluate. Both yield float32 images in [0, 1]
of shape (batch, crop, crop, 3) and float32 one-hot labels of shape (batch, num_classes).

Example:
    >>> from bit_tf import data
    >>> source = data.from_folder("flowers/")
    >>> train, validation = data.split(source, validation_fraction=0.2, seed=0)
    >>> images, labels = next(iter(data.train_pipeline(train, batch_size=32, resize=160, crop=128)))
    >>> images.shape, labels.shape
    (TensorShape([32, 128, 128, 3]), TensorShape([32, 5]))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from bit_tf.data import image_folder
from bit_tf.data.encoded_cache import CACHE_BYTES, CachePolicy
from bit_tf.data.eval_crops import short_side_central_crop
from bit_tf.data.example_order import shuffled_records
from bit_tf.data.example_readers import (
    ArrayReader,
    ExampleReader,
    FolderReader,
    ImageFeature,
    TfdsReader,
)
from bit_tf.data.mixup import mix_batches

AUTOTUNE = tf.data.AUTOTUNE
#: Evaluation keeps its resized images in memory when they fit in this many bytes.
DECODED_CACHE_BYTES = 256 << 20
#: Batches a pipeline prepares ahead of the model.
PREFETCH_BATCHES = 2
#: What tf.data's autotuning may hold in buffers, in bytes.
AUTOTUNE_RAM_BUDGET = 1 << 30
# Folded into the seed with each example's stream position for its crop and flip.
_AUGMENT_STREAM = 0x43524F50  # "CROP"

__all__ = [
    "AUTOTUNE",
    "CACHE_BYTES",
    "DECODED_CACHE_BYTES",
    "ImageSource",
    "eval_pipeline",
    "few_shot",
    "from_arrays",
    "from_folder",
    "from_tfds",
    "load_digits",
    "pipeline_options",
    "resolve_seed",
    "split",
    "tfds_source",
    "train_pipeline",
    "training_records",
]


class ImageSource:
    """A labelled image collection of known size, before any preprocessing.

    Use the constructors `from_tfds`, `from_folder`, `from_arrays` and `load_digits`.

    Attributes:
        name: where it comes from, for messages.
        num_examples: the number of examples (known before training).
        num_classes: the number of classes; labels are 0 .. num_classes - 1.
        class_names: a name per class.
        image_size: a typical (height, width), for `hyperrule.get_resolution`.
        skipped: files that were not used, as (path, reason) (image folders only); files
            that fail to decode during training are added as the pipelines meet them.
        reader: how the examples are read (`bit_tf.data.example_readers.ExampleReader`).
        indices: the positions of this source's examples in `reader`, increasing.

    Example:
        >>> source = bit_tf.data.from_arrays(images, labels)
        >>> source.num_examples, source.num_classes
        (1000, 10)
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        class_names: Sequence[str],
        num_examples: int,
        image_size: tuple,
        reader: ExampleReader,
        labels: np.ndarray | None = None,
        label_reader: Callable[[], np.ndarray] | None = None,
        indices: np.ndarray | None = None,
        skipped: list | None = None,
    ):
        self.name = name
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names)
        self.num_examples = int(num_examples)
        self.image_size = tuple(int(size) for size in image_size)
        self.skipped = skipped if skipped is not None else []
        self.reader = reader
        self.indices = (
            np.arange(self.num_examples, dtype=np.int64)
            if indices is None
            else np.asarray(indices, np.int64)
        )
        self._whole = indices is None
        self._labels = labels
        self._label_reader = label_reader
        if self.num_classes < 2:
            raise ValueError(
                f"Source {name!r} has {self.num_classes} class(es); a classifier needs at least "
                "2 classes."
            )
        if self.num_examples < 1:
            raise ValueError(f"Source {name!r} has no examples.")

    def __repr__(self) -> str:
        return (
            f"ImageSource({self.name!r}, num_examples={self.num_examples}, "
            f"num_classes={self.num_classes}, image_size={self.image_size})"
        )

    def labels(self) -> np.ndarray:
        """The label of every example, in order (reads the labels only, not the images)."""
        if self._labels is None:
            all_labels = self._label_reader()
            self._labels = all_labels if self._whole else all_labels[self.indices]
        return self._labels

    def dataset(self) -> tf.data.Dataset:
        """The examples as (image float32 HxWx3 in [0, 1], label int32), in a fixed order;
        files that fail to decode are left out (and added to `skipped`)."""
        decoded = self.reader.records_in_order(self.indices).map(
            lambda record, label: (*self.reader.decode(record), label),
            num_parallel_calls=AUTOTUNE,
        )
        return decoded.filter(lambda image, ok, label: ok).map(
            lambda image, ok, label: (image, label)
        )

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageSource:
        """The examples at `indices` (positions in this source), in increasing order.

        Example:
            >>> first_ten = source.subset(range(10))
        """
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if indices.size and (indices[0] < 0 or indices[-1] >= self.num_examples):
            raise IndexError(
                f"Indices must be in [0, {self.num_examples}) for source {self.name!r}, "
                f"got values from {indices[0]} to {indices[-1]}."
            )
        labels = None if self._labels is None else self._labels[indices]
        return ImageSource(
            name or self.name,
            self.num_classes,
            self.class_names,
            len(indices),
            self.image_size,
            self.reader,
            labels=labels,
            label_reader=self._label_reader,
            indices=self.indices[indices],
            skipped=self.skipped,
        )


def _checked_images(images: np.ndarray) -> np.ndarray:
    """`images` as (N, H, W, C) with C of 1, 3 or 4, in native byte order, uint8, uint16 or
    float32 in [0, 1]; converted to RGB float32 one at a time by the pipelines."""
    images = np.asarray(images)
    if images.ndim in (3, 4) and 0 in images.shape[:3]:
        raise ValueError(
            f"images must have at least one example, row and column, got shape {images.shape}."
        )
    if not images.dtype.isnative:
        images = images.astype(images.dtype.newbyteorder("="))
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"images must have shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4), "
            f"got {images.shape}."
        )
    if images.dtype in (np.uint8, np.uint16):
        return images
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32, copy=False)
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(
                f"Float images must be in [0, 1], got values from {low} to {high}. Divide by "
                "the maximum (e.g. 255) first."
            )
        return images
    raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got {images.dtype}.")


def _check_labels(labels: np.ndarray, num_classes: int | None, name: str) -> np.ndarray:
    """The labels as int32 class indices below `num_classes` (None: their largest plus one)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Labels of {name!r} must be a 1-D array of integer class indices, got shape "
            f"{labels.shape} and dtype {labels.dtype}."
        )
    if num_classes is None:
        num_classes = int(np.max(labels)) + 1 if len(labels) else 0
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Labels of {name!r} must be in [0, {num_classes}) for {num_classes} classes; "
            f"found {bad.size} out of range, e.g. {bad[:5].tolist()}. Pass the right "
            "num_classes or fix the labels."
        )
    return labels.astype(np.int32)


def _checked_class_names(names, num_classes: int, name: str) -> list[str]:
    """One name per class (given, or "0", "1", ...)."""
    if names is None:
        return [str(index) for index in range(num_classes)]
    if isinstance(names, str | bytes):
        raise TypeError(f"class_names of {name!r} must be a sequence of names, got {names!r}.")
    names = [str(class_name) for class_name in names]
    if len(names) != num_classes:
        raise ValueError(
            f"{len(names)} class names given for the {num_classes} classes of {name!r}."
        )
    return names


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    name: str = "arrays",
) -> ImageSource:
    """A source from in-memory images (uint8, uint16, or float in [0, 1]) and integer labels.

    The images are kept as given (no float32 copy of the whole array); grayscale images are
    repeated to RGB and an alpha channel is dropped, one example at a time.

    Raises:
        ValueError: shapes, dtypes or value ranges that do not fit, labels out of range, or
            fewer than 2 classes.

    Example:
        >>> source = from_arrays(np.zeros((100, 32, 32, 3), "uint8"), np.arange(100) % 10)
    """
    images = _checked_images(images)
    labels = _check_labels(labels, num_classes, name)
    if num_classes is None:
        num_classes = int(np.max(labels)) + 1 if len(labels) else 0
    if len(labels) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels for {name!r}.")
    class_names = _checked_class_names(class_names, num_classes, name)
    return ImageSource(
        name,
        num_classes,
        class_names,
        len(labels),
        images.shape[1:3],
        ArrayReader(images, labels),
        labels,
    )


def load_digits(validation_fraction: float = 0.2, seed: int = 0) -> tuple:
    """The embedded default: scikit-learn's 1,797 handwritten digits (8x8, 10 classes).

    Returns (train, validation) sources; `validation_fraction` of every class is held out.

    Example:
        >>> train, validation = load_digits()
        >>> train.num_examples, validation.num_examples
        (1438, 359)
    """
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    source = from_arrays(
        images, digits.target, num_classes=10, name="sklearn-digits", class_names=None
    )
    return split(source, validation_fraction, seed=seed)


def from_folder(root: str | os.PathLike, max_pixels: int = image_folder.MAX_PIXELS) -> ImageSource:
    """A source from `root/<class name>/<image files>` (any depth below the class folder).

    Every file is checked once, before training, without decoding its pixels (readable, an
    image header, not too large, not cut short); files that fail are skipped and reported
    (`source.skipped`, and a warning with the count and a few names), and so is a file that
    fails to decode later, when a pipeline meets it. Metadata folders such as `@eaDir` and
    `__MACOSX` are ignored. Images of any mode are converted to RGB, upright (EXIF
    orientation). See `bit_tf.data.image_folder`.

    Raises:
        image_folder.ImageFolderError: fewer than 2 classes, or a class without readable image.

    Example:
        >>> source = from_folder("flowers/")
        >>> source.class_names
        ('daisy', 'dandelion', 'rose', 'sunflower', 'tulip')
    """
    scan = image_folder.scan_folder(root, max_pixels=max_pixels)
    return ImageSource(
        os.fspath(root),
        len(scan.class_names),
        scan.class_names,
        len(scan.paths),
        scan.image_size,
        FolderReader(scan, max_pixels),
        labels=scan.labels,
        skipped=scan.skipped,
    )


def from_tfds(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = True,
) -> ImageSource:
    """A source from a TensorFlow Datasets image-classification dataset.

    Images stay encoded until a pipeline has shuffled them (`tfds.decode.SkipDecoding`).

    Args:
        name: the TFDS name, e.g. "oxford_flowers102" or "cifar10:3.0.2".
        split: a TFDS split string, e.g. "train", "train[:90%]".
        data_dir: where TFDS keeps its data (default ~/tensorflow_datasets).
        manual_dir: where manually downloaded files are (datasets that need them).
        download: download and prepare the dataset if it is not there yet.

    Example:
        >>> source = from_tfds("oxford_flowers102", split="train")
        >>> source.num_classes
        102
    """
    import tensorflow_datasets as tfds

    load_options = {
        "split": split,
        "data_dir": data_dir,
        "shuffle_files": False,
        "download": download,
    }
    if manual_dir:
        load_options["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
        }
    dataset, info = tfds.load(name, with_info=True, **load_options)
    image_key, label_key = info.supervised_keys or ("image", "label")
    if label_key not in info.features or not hasattr(info.features[label_key], "num_classes"):
        raise ValueError(
            f"TFDS dataset {name!r} has no class label feature {label_key!r}; bit_tf "
            "fine-tunes image classifiers."
        )
    label_feature = info.features[label_key]

    def load(decoders=None):
        return tfds.load(name, decoders=decoders, **load_options)

    def label(example):
        return tf.cast(example[label_key], tf.int32)

    return tfds_source(
        f"{name}:{split}",
        load,
        info,
        split,
        image_key,
        label,
        label_feature.names,
        dataset=dataset,
    )


def tfds_source(
    name: str,
    load: Callable[..., tf.data.Dataset],
    info,
    split: str,
    image_key: str,
    label: Callable,
    class_names: Sequence[str],
    *,
    label_decoders=None,
    image_scale: int = 1,
    dataset: tf.data.Dataset | None = None,
) -> ImageSource:
    """A source over the examples `load(decoders)` gives of a TFDS split, labelled by `label`.

    `from_tfds` builds its sources with it; a caller with a label of its own (one derived from
    annotations, VTAB's Structured tasks) or a part of a split calls it directly. The examples
    are counted (TFDS's cardinality, else by reading the labels only), the image size is the
    feature's or the first image's, and labels are read with `label_decoders` (default: the
    image left undecoded).

    Args:
        name: the source's name, for messages and the disk cache's folder.
        load: decoders -> the split's dataset of example dicts, in a fixed order.
        info: the dataset's `tfds.core.DatasetInfo`.
        split: the TFDS split string `load` reads, for TFDS's size statistics.
        image_key: the image feature's key.
        label: example dict -> int32 label.
        class_names: a name per class; their number is the number of classes.
        label_decoders: TFDS decoders that read what `label` needs and nothing more.
        image_scale: multiplies the stored pixel values (dSprites stores 0/1 pixels).
        dataset: `load()`'s dataset, where the caller has opened it already.

    Example:
        >>> def load(decoders=None):
        ...     return tfds.load("mnist", split="train[:100]", decoders=decoders)
        >>> source = tfds_source("mnist:first100", load, tfds.builder("mnist").info,
        ...                      "train[:100]", "image", lambda x: x["label"],
        ...                      [str(digit) for digit in range(10)])
        >>> source.num_examples
        100
    """
    import tensorflow_datasets as tfds

    if label_decoders is None:
        label_decoders = {image_key: tfds.decode.SkipDecoding()}
    dataset = load() if dataset is None else dataset
    image_feature = info.features[image_key]
    feature = tfds_image_feature(image_feature)
    reader = TfdsReader(
        load,
        image_key,
        label,
        ImageFeature(encoded=feature.encoded, dtype=feature.dtype, scale=image_scale),
        name,
        tfds_bytes_per_example(info, split),
    )
    num_examples = int(dataset.cardinality())
    if num_examples < 0:
        num_examples = int(load(label_decoders).reduce(np.int64(0), lambda count, _: count + 1))
    height, width = image_feature.shape[:2]
    if height is None or width is None:
        first_example = next(iter(dataset.take(1)))
        height, width = first_example[image_key].shape[:2]
    return ImageSource(
        name,
        len(class_names),
        class_names,
        num_examples,
        (height, width),
        reader,
        label_reader=lambda: np.fromiter(_tfds_labels(load, label_decoders, label), np.int32),
    )


def tfds_image_feature(feature) -> ImageFeature:
    """What a TFDS image feature holds (`bit_tf.data.example_readers.ImageFeature`): encoded
    bytes for an `Image` feature, else pixels, and their dtype.

    Example:
        >>> tfds_image_feature(info.features["image"])
        ImageFeature(encoded=True, dtype=tf.uint8, scale=1)
    """
    import tensorflow_datasets as tfds

    dtype = tf.as_dtype(getattr(feature, "np_dtype", None) or feature.dtype)
    return ImageFeature(encoded=isinstance(feature, tfds.features.Image), dtype=dtype)


def tfds_bytes_per_example(info, split: str) -> float | None:
    """The mean size of a prepared example of `split`, from TFDS's records; None if unknown.

    Example:
        >>> tfds_bytes_per_example(info, "train")
        2812.4
    """
    try:
        split_info = info.splits[split]
        size, count = int(split_info.num_bytes), int(split_info.num_examples)
    except Exception:  # a mocked, unprepared or unusual split: no statistics
        return None
    return size / count if size > 0 and count > 0 else None


def _tfds_labels(load, label_decoders, label):
    labels = load(label_decoders).map(label)
    for batch in labels.batch(4096).as_numpy_iterator():
        yield from batch.tolist()


def _examples_by_class(source: ImageSource) -> list[np.ndarray]:
    """The indices of each class's examples in `source`, in class order."""
    labels = source.labels()
    return [np.flatnonzero(labels == label) for label in range(source.num_classes)]


def few_shot(source: ImageSource, examples_per_class: int, seed: int = 0) -> ImageSource:
    """Exactly `examples_per_class` examples of every class, drawn deterministically from `seed`.

    Raises:
        ValueError: a class has fewer examples than asked for.

    Example:
        >>> five_shot = few_shot(source, examples_per_class=5, seed=0)
        >>> five_shot.num_examples == 5 * source.num_classes
        True
    """
    if isinstance(examples_per_class, np.integer):
        examples_per_class = int(examples_per_class)
    if not isinstance(examples_per_class, int) or examples_per_class < 1:
        raise ValueError(
            f"examples_per_class must be a positive integer, got {examples_per_class!r}."
        )
    generator = np.random.default_rng(seed)
    chosen = []
    for label, candidates in enumerate(_examples_by_class(source)):
        if len(candidates) < examples_per_class:
            raise ValueError(
                f"Class {label} ({source.class_names[label]!r}) of {source.name!r} has only "
                f"{len(candidates)} example(s), fewer than examples_per_class="
                f"{examples_per_class}. Lower examples_per_class."
            )
        chosen.append(generator.choice(candidates, examples_per_class, replace=False))
    name = f"{source.name} ({examples_per_class}-shot, seed {seed})"
    return source.subset(np.concatenate(chosen), name=name)


def split(
    source: ImageSource, validation_fraction: float = 0.2, seed: int = 0, at_least: int = 0
) -> tuple:
    """Splits a source into (train, validation), holding out `validation_fraction` of each class
    (and `at_least` examples of a class that has more than that).

    Example:
        >>> train, validation = split(source, 0.2, seed=0)
        >>> train, minival = split(source, 0.02, seed=0, at_least=1)
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be between 0 and 1, got {validation_fraction!r}."
        )
    generator = np.random.default_rng(seed)
    held_out = []
    for members in _examples_by_class(source):
        shuffled = generator.permutation(members)
        count = int(round(validation_fraction * len(members)))
        if len(members) > at_least:
            count = max(count, at_least)
        held_out.append(shuffled[:count])
    held_out = np.concatenate(held_out)
    kept = np.setdiff1d(np.arange(source.num_examples), held_out)
    return (
        source.subset(kept, name=f"{source.name} (train split)"),
        source.subset(held_out, name=f"{source.name} (validation split)"),
    )


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def resolve_seed(seed: int | None) -> int:
    """`seed`, or a fresh random seed for None (drawn once, so one pipeline stays consistent).

    Example:
        >>> resolve_seed(7)
        7
    """
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    return int(seed)


def pipeline_options() -> tf.data.Options:
    """The tf.data options of the pipelines: deterministic order, and autotuned buffers that
    hold at most `AUTOTUNE_RAM_BUDGET` bytes.

    Example:
        >>> dataset = dataset.with_options(pipeline_options())
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.autotune.ram_budget = AUTOTUNE_RAM_BUDGET
    return options


def _one_hot(num_classes):
    return lambda image, label: (image, tf.one_hot(label, num_classes, dtype=tf.float32))


def example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
    """The stateless seed (2 int64) of the example at stream `position` of a pipeline.

    Example:
        >>> example_seed(0, tf.constant(5, tf.int64)).shape
        TensorShape([2])
    """
    base = tf.constant([seed, _AUGMENT_STREAM], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


def training_records(
    source: ImageSource,
    batch_size: int,
    seed: int | None,
    cache: bool | str,
    start_batch: int,
    epochs: int | None = None,
) -> tuple[int, tf.data.Dataset, Callable]:
    """(the seed, the shuffled records as (position, record, label) from batch `start_batch`
    of `batch_size`, the records' decode function) of a training pipeline over `source`
    (`bit_tf.data.example_order.shuffled_records`); None draws a seed.

    Raises:
        ValueError: a `start_batch` that is not a non-negative integer.

    Example:
        >>> seed, records, decode = training_records(source, 32, 0, "auto", start_batch=0)
    """
    if isinstance(start_batch, bool) or not isinstance(start_batch, int) or start_batch < 0:
        raise ValueError(f"start_batch must be a non-negative integer, got {start_batch!r}.")
    seed = resolve_seed(seed)
    records, decode = shuffled_records(
        source.reader,
        source.indices,
        seed,
        start_batch * batch_size,
        CachePolicy.parse(cache),
        source.name,
        epochs=epochs,
    )
    return seed, records, decode


def train_pipeline(
    source: ImageSource,
    batch_size: int,
    resize: int,
    crop: int,
    mixup_alpha: float = 0.0,
    seed: int | None = None,
    cache: bool | str = "auto",
    repeat: bool = True,
    random_flip: bool = True,
    random_crop: bool = True,
    start_batch: int = 0,
    reduced_scale_decoding: bool = False,
) -> tf.data.Dataset:
    """Training batches: shuffle -> decode -> resize -> random crop -> random flip -> batch ->
    MixUp -> prefetch.

    Every epoch is a fresh permutation of all the examples (records, not pixels, are
    shuffled), so memory does not grow with the dataset: a few images in flight and
    `PREFETCH_BATCHES` batches.

    Args:
        source: an `ImageSource`.
        batch_size: examples per batch; the last partial batch is dropped.
        resize: the square size images are first resized to (HyperRule: 160, 448 or 512).
        crop: the square size of the random crop (128, 384 or 480).
        mixup_alpha: MixUp's Beta(alpha, alpha), one coefficient per batch as the authors mix
            (`bit_tf.data.mixup`); 0 turns MixUp off.
        seed: makes the order, crops, flips and MixUp deterministic; None for fresh randomness.
        cache: where the encoded images may be cached (`bit_tf.data.encoded_cache`): "auto" (in
            memory when they fit `CACHE_BYTES`), "memory", "none", or a folder on a local disk.
        repeat: repeat forever (for `model.fit(steps_per_epoch=...)`); False: one epoch.
        random_flip: flip images left-right at random; False where a flip changes the label
            (VTAB's dSprites/location, dSprites/orientation, SmallNORB/azimuth).
        random_crop: crop at random; False resizes straight to `crop` instead, for tasks where
            a crop changes the label (object counts, distances, positions).
        start_batch: begin with this batch of the stream (a resumed run: the batches done).
        reduced_scale_decoding: decode a JPEG of a folder at 1/2, 1/4 or 1/8 of its size
            (in the DCT domain, `bit_tf.data.image_folder.decode_for_pipeline`) where both sides
            stay at least the resize size: several times faster on large photos, but the
            resized pixels are then close to an anti-aliased resize's, not the authors'
            (measured in benchmarks/RESULTS.md). False (the default) decodes every image
            whole, as the authors' pipeline, evaluation and `bit-predict` do.

    Example:
        >>> batches = train_pipeline(source, batch_size=64, resize=160, crop=128, seed=0)
        >>> positions = train_pipeline(source, 64, 160, 128, random_flip=False, random_crop=False)
    """
    _check_sizes(batch_size=batch_size, resize=resize, crop=crop)
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not be larger than resize ({resize}).")
    if batch_size > source.num_examples and not repeat:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {source.num_examples} examples of "
            f"{source.name!r}; use a smaller batch."
        )
    seed, records, decode = training_records(
        source, batch_size, seed, cache, start_batch, epochs=None if repeat else 1
    )
    size = resize if random_crop else crop
    smallest_side = size if reduced_scale_decoding else 0

    def decode_and_augment(position, record, label):
        image, decoded = decode(record, smallest_side)
        image = tf.image.resize(image, (size, size))
        pair = example_seed(seed, position)
        if random_crop:
            image = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=pair)
        if random_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=pair[::-1])
        return image, label, decoded

    dataset = records.map(decode_and_augment, num_parallel_calls=AUTOTUNE)
    dataset = dataset.filter(lambda image, label, decoded: decoded)
    dataset = dataset.map(lambda image, label, decoded: (image, label))
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(_one_hot(source.num_classes), num_parallel_calls=AUTOTUNE)
    if mixup_alpha:
        dataset = mix_batches(dataset, mixup_alpha, seed=seed, start_batch=start_batch)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())


def _decoded_cache_fits(source: ImageSource, size: int, cache: bool | str) -> bool:
    if CachePolicy.parse(cache).kind == "none":
        return False
    return source.num_examples * size * size * 3 * 4 <= DECODED_CACHE_BYTES


def eval_pipeline(
    source: ImageSource,
    batch_size: int,
    crop: int,
    cache: bool | str = "auto",
    short_side: int | None = None,
) -> tf.data.Dataset:
    """Evaluation batches: resize to `crop` (as the authors' BiT code evaluates), in order, last
    batch kept; with `short_side`, resize the shorter side to it and take the central `crop`
    instead (as big_vision's distillation evaluates, `bit_tf.data.eval_crops`).

    The resized images are cached in memory when all of them fit `DECODED_CACHE_BYTES`
    (validation runs many times), unless `cache` is "none" or False.

    Example:
        >>> model.evaluate(eval_pipeline(validation, batch_size=256, crop=128))
        >>> model.evaluate(eval_pipeline(validation, 256, crop=128, short_side=160))
    """
    _check_sizes(batch_size=batch_size, crop=crop)
    if short_side is not None:
        _check_sizes(short_side=short_side)
    reader = source.reader

    def decode_and_resize(record, label):
        # Whole-size decoding, as bit-predict and the serving export read a photo.
        image, decoded = reader.decode(record)
        if short_side is not None:
            return short_side_central_crop(image, short_side, crop), label, decoded
        return tf.image.resize(image, (crop, crop)), label, decoded

    dataset = reader.records_in_order(source.indices).map(
        decode_and_resize, num_parallel_calls=AUTOTUNE
    )
    dataset = dataset.filter(lambda image, label, decoded: decoded)
    dataset = dataset.map(lambda image, label, decoded: (image, label))
    if _decoded_cache_fits(source, crop, cache):
        dataset = dataset.cache()
    dataset = dataset.batch(batch_size).map(
        _one_hot(source.num_classes), num_parallel_calls=AUTOTUNE
    )
    return dataset.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())
