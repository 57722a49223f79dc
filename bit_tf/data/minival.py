"""Train, minival and test splits of a TFDS data set: validation that never looks at the test set.

A run that keeps its best checkpoint by validation accuracy selects a model on its validation
split; when that split is the test split, the reported test number is no longer unbiased. The
authors hold out a part of the training split instead (a "minival"): their TF2/JAX input
pipeline trains on `train[:98%]` of CIFAR-10/100 and `train[:99%]` of ImageNet
(google-research/big_transfer `input_pipeline_tf2_or_jax.py` L30-34), and big_vision's ImageNet
distillation validates on `train[99%:]` (`configs/proj/distill/bit_i1k.py` L92-96).

`tfds_splits` returns (train, minival, test):

- ImageNet (`imagenet2012`, train split "train"): the last 1% of the train split is the minival
  (`train[99%:]`), training uses `train[:99%]`, the test is TFDS's `validation` split (ImageNet
  publishes no test labels);
- a data set with a `validation` split of its own (Flowers-102, SUN397, DTD, ...): that split,
  as big_vision's distillation configs validate on Flowers and SUN
  (`bigsweep_flowers_pet.py` L117-118, `bigsweep_food_sun.py` L115-117);
- any other data set: `validation_fraction` of every class of the train split (2% by default,
  the authors' CIFAR minival; at least one example of every class) is held out at random from
  `seed` (`bit_tf.data.split`).

The test is `test_split` (ImageNet: `validation`). A `validation_fraction` given always holds
out that share of the train split.

Example:
    >>> from bit_tf.data.minival import tfds_splits
    >>> train, minival, test = tfds_splits("oxford_iiit_pet")
    >>> model, history = bit_tf.finetune("BiT-M-R50x1", train, minival, weights="BiT-M-R50x1")
    >>> bit_tf.vtab.evaluate_accuracy(model, test, crop=384)
"""

from __future__ import annotations

from bit_tf.data import pipelines as data

__all__ = ["IMAGENET_SPLITS", "MINIVAL_FRACTION", "tfds_splits"]

#: The share of every class of a train split held out as the minival (the authors' CIFAR 2%).
MINIVAL_FRACTION = 0.02
#: ImageNet's (train, minival, test) TFDS splits.
IMAGENET_SPLITS = ("train[:99%]", "train[99%:]", "validation")


def tfds_splits(
    name: str,
    train_split: str = "train",
    test_split: str = "test",
    validation_fraction: float | None = None,
    seed: int = 0,
    **options,
) -> tuple[data.ImageSource, data.ImageSource, data.ImageSource]:
    """(train, minival, test) `ImageSource`s of the TFDS data set `name` (see the module's
    docstring); `options` go to `bit_tf.data.from_tfds` (data_dir=, manual_dir=, ...).

    Example:
        >>> train, minival, test = tfds_splits("imagenet2012", data_dir="/data/tfds")
        >>> minival.name
        'imagenet2012:train[99%:]'
    """
    stem = name.split(":")[0]
    if stem == "imagenet2012" and train_split == "train" and validation_fraction is None:
        return tuple(data.from_tfds(name, split=split, **options) for split in IMAGENET_SPLITS)
    test = data.from_tfds(name, split=test_split, **options)
    train = data.from_tfds(name, split=train_split, **options)
    if (
        validation_fraction is None
        and test_split != "validation"
        and _has_validation(name, options)
    ):
        return train, data.from_tfds(name, split="validation", **options), test
    fraction = MINIVAL_FRACTION if validation_fraction is None else validation_fraction
    train, minival = data.split(train, fraction, seed=seed, at_least=1)
    return train, minival, test


def _has_validation(name: str, options: dict) -> bool:
    """Whether the (prepared) TFDS data set `name` has a "validation" split."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=options.get("data_dir"))
    return "validation" in builder.info.splits
