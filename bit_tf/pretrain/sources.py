"""Where pre-training examples come from: a TFDS name, an image folder or TFRecord files.

`open_source` resolves the `--dataset` of `bit-pretrain` to a `Source`; `bit_tf.pretrain.records`
reads its examples.

- a TFDS name, e.g. "imagenet2012" or "imagenet2012:5.1.0" (`data_dir` is the TFDS folder);
- a folder of class subfolders of images (`root/cat/001.jpg`): labels are the sorted folder
  names' indices;
- TFRecord files of `tf.train.Example`s with `image/encoded` (JPEG/PNG bytes) and
  `image/class/label` (an int, or a list of ints for multi-label data): a file, a directory of
  files, or a glob such as "/data/imagenet/train-*".

Example:
    >>> source = open_source("/data/imagenet/train-*")
    >>> source.kind, len(source.files)
    ('tfrecord', 1024)
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from bit_tf.data.image_folder import is_metadata

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DataError(ValueError):
    """The dataset cannot be found or read, or its labels do not fit the model.

    Example:
        >>> try:
        ...     open_source("/data/missing/train-*")
        ... except DataError as error:
        ...     print(error)  # what is wrong, and what to pass instead
    """


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

    Example:
        >>> Source("folder", "/data/pets", files=["/data/pets/cat/1.jpg"], labels=[0],
        ...        class_names=["cat"]).num_examples()
        1
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
    # Metadata that photo tools and systems leave (@eaDir, __MACOSX, ._IMG_1.jpg, ...) is
    # neither a class nor an image.
    class_names = sorted(
        entry.rstrip("/")
        for entry in tf.io.gfile.listdir(root)
        if tf.io.gfile.isdir(os.path.join(root, entry)) and not is_metadata(entry.rstrip("/"))
    )
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        images = sorted(
            os.path.join(folder, entry)
            for entry in tf.io.gfile.listdir(folder)
            if entry.lower().endswith(IMAGE_EXTENSIONS) and not is_metadata(entry)
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
