"""What a recipe trains and validates on: the train stream, the validation batches, the task.

A recipe turns its train and validation inputs into `Inputs` (`bit_tf.data.resolve.resolve`
first): an `ImageSource` gets the recipe's own augmentation pipeline, a `tf.data.Dataset` is
read as given (`given_train_stream`), and validation images go through the evaluation pipeline
(`validation_batches`). `dataset_identity` is what a run records of its train input.

Example:
    >>> train = resolve(train, "train")
    >>> stream, num_classes, dataset_size = given_train_stream(dataset, config)
    >>> inputs = Inputs(stream, validation_batches(validation, 64, 128), num_classes, dataset_size)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.training.config import TrainingConfig

__all__ = [
    "Inputs",
    "check_same_task",
    "class_names_of",
    "dataset_identity",
    "given_train_stream",
    "validation_batches",
]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The train stream (endless, from a micro-batch number) and validation batches, and what
    the task is.

    Attributes:
        train_stream: called with the micro-batch to start at, returns the endless stream.
        validation_batches: batches of (images, one-hot labels), or None for no validation.
        num_classes: the task's classes.
        dataset_size: the training examples (None where unknown).
        resolution: (resize, crop) of an ImageSource train input, else None.
        mixup_alpha: the MixUp of an ImageSource train input, else None.

    Example:
        >>> inputs = Inputs(lambda start: batches.repeat(), None, num_classes=10,
        ...                 dataset_size=1000)
    """

    train_stream: Callable[[int], tf.data.Dataset]
    validation_batches: tf.data.Dataset | None
    num_classes: int
    dataset_size: int | None
    resolution: tuple[int, int] | None = None
    mixup_alpha: float | None = None


def given_train_stream(
    train: tf.data.Dataset, config: TrainingConfig
) -> tuple[Callable[[int], tf.data.Dataset], int, int | None]:
    """(stream, classes, examples) of a batched `tf.data.Dataset` train input, read as given.

    Raises:
        ValueError: neither `config.dataset_size` nor `config.steps` says how long to train.

    Example:
        >>> stream, num_classes, size = given_train_stream(batches, config)
    """
    if config.dataset_size is None and config.steps is None:
        raise ValueError(
            "A tf.data.Dataset train input needs dataset_size= (for the schedule) or steps=."
        )

    def train_stream(start_batch: int) -> tf.data.Dataset:
        return train.repeat()  # a dataset given as it is starts at its beginning

    return train_stream, int(train.element_spec[1].shape[-1]), config.dataset_size


def validation_batches(
    validation, micro_batch: int, crop: int | None, short_side: int | None = None
) -> tf.data.Dataset | None:
    """The evaluation pipeline of an ImageSource at `crop` (with `short_side`: the shorter
    side resized to it, then the central crop); a tf.data input (or None) as given.

    Raises:
        ValueError: an ImageSource without a crop size to evaluate it at.

    Example:
        >>> batches = validation_batches(validation_source, micro_batch=64, crop=128)
    """
    if not isinstance(validation, data_lib.ImageSource):
        return validation
    if crop is None:
        raise ValueError("crop= is needed to evaluate an ImageSource next to a tf.data train.")
    return data_lib.eval_pipeline(validation, micro_batch, crop, short_side=short_side)


def check_same_task(train, validation) -> None:
    """Raises ValueError unless two ImageSources have the same classes in the same order
    (a tf.data input, or None, is not checked).

    Example:
        >>> check_same_task(train, validation)
    """
    sources = (data_lib.ImageSource,)
    if not isinstance(train, sources) or not isinstance(validation, sources):
        return
    if validation.num_classes != train.num_classes:
        raise ValueError(
            f"train has {train.num_classes} classes but validation has "
            f"{validation.num_classes}; they must be the same classification task."
        )
    if validation.class_names != train.class_names:
        first = next(
            index
            for index, (a, b) in enumerate(
                zip(train.class_names, validation.class_names, strict=False)
            )
            if a != b
        )
        raise ValueError(
            f"train ({train.name}) and validation ({validation.name}) name their classes "
            f"differently: class {first} is {train.class_names[first]!r} in train but "
            f"{validation.class_names[first]!r} in validation; they must be the same "
            "classification task, with the classes in the same order."
        )


def dataset_identity(train) -> dict | None:
    """What names an ImageSource train input in a run's settings: where it comes from, its
    classes and size (None for a tf.data input).

    Example:
        >>> dataset_identity(train)
        {'name': 'flowers', 'class_names': ['daisy', 'rose'], 'examples': 120}
    """
    if not isinstance(train, data_lib.ImageSource):
        return None
    return {
        "name": train.name,
        "class_names": list(train.class_names),
        "examples": train.num_examples,
    }


def class_names_of(train) -> tuple[str, ...] | None:
    """The class names of an ImageSource train input (folders, TFDS labels); None otherwise.

    Example:
        >>> class_names_of(train)
        ('daisy', 'rose')
    """
    return train.class_names if isinstance(train, data_lib.ImageSource) else None
