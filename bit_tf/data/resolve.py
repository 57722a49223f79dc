"""The one way to turn what a user passes as a dataset into a source the recipes read.

`resolve` accepts a `bit_tf.data.ImageSource` (returned as it is), an (images, labels) pair of
arrays, the path of a folder of class subfolders, a TFDS name, or a batched `tf.data.Dataset`
(returned as it is: it is read as given). Fine-tuning, distillation and the commands' dataset
flags call it; a `tf.data.Dataset` stays one, everything else becomes an `ImageSource`.

Example:
    >>> import numpy as np
    >>> source = resolve((np.zeros((4, 32, 32, 3)), np.array([0, 1, 0, 1])), role="train")
    >>> source.num_classes
    2
    >>> resolve("/data/flowers").name
    '/data/flowers'
    >>> resolve("oxford_flowers102", split="test").num_examples
    6149
"""

from __future__ import annotations

import os
import re
from typing import Any

import tensorflow as tf

from bit_tf.data import pipelines

__all__ = ["check_tfds_name", "resolve"]


def resolve(
    value: Any,
    role: str = "train",
    split: str | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    like: pipelines.ImageSource | tf.data.Dataset | None = None,
) -> pipelines.ImageSource | tf.data.Dataset | None:
    """The source of `value`: an ImageSource, or a `tf.data.Dataset` given as it is.

    Args:
        value: an `ImageSource`, an (images, labels) pair, a class-folder path, a TFDS name, a
            batched `tf.data.Dataset`, or None (returned as None: no such input).
        role: what the input is for ("train", "validation", ...), named in errors and given as
            the name of an arrays source.
        split: the TFDS split of a TFDS name; None for "train" for the train role, else "test".
        data_dir, manual_dir: TFDS's data and manual-download folders, for a TFDS name.
        like: the train source an (images, labels) pair belongs with: its labels count that
            source's classes (a validation pair need not hold an example of the last class).

    Raises:
        TypeError: a value of another kind.
        ImageFolderError, ValueError: a folder or arrays that cannot be used (from
            `bit_tf.data.from_folder` and `from_arrays`).

    Example:
        >>> resolve("/data/flowers/train").num_classes
        5
    """
    if value is None or isinstance(value, pipelines.ImageSource | tf.data.Dataset):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        num_classes = like.num_classes if isinstance(like, pipelines.ImageSource) else None
        return pipelines.from_arrays(value[0], value[1], num_classes=num_classes, name=role)
    if isinstance(value, str | os.PathLike):
        if os.path.isdir(value):
            return pipelines.from_folder(value)
        check_tfds_name(str(value), role)
        if split is None:
            split = "train" if role == "train" else "test"
        return pipelines.from_tfds(
            str(value), split=split, data_dir=data_dir, manual_dir=manual_dir
        )
    raise TypeError(
        f"{role} must be a bit_tf.data.ImageSource, an (images, labels) pair, a folder path, "
        f"a TFDS name or a batched tf.data.Dataset, got {type(value).__name__}."
    )


def check_tfds_name(value: str, role: str) -> None:
    """Raises ValueError if `value`, which is no folder, is not the name of a TFDS dataset
    either (a mistyped or missing folder, most often); `role` names it in the message.

    Example:
        >>> check_tfds_name("phtos/", "train")
        ValueError: train='phtos/' is neither a folder here nor a TFDS dataset name: ...
    """
    import tensorflow_datasets as tfds

    # TFDS's own datasets: the community index is on the network.
    if re.split("[/:]", value)[0] not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"{role}={value!r} is neither a folder here nor a TFDS dataset name: give the path "
            "of a folder with one subfolder per class, or a name from tfds.list_builders()."
        )
