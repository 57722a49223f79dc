"""The `--dataset` of bit-finetune and bit-distill: checked before any work, then read.

A dataset argument is "digits" (scikit-learn's embedded handwritten digits, offline), a folder
with one subfolder per class, or a TFDS name. A value that is none of these ends the command in
one line, status 2, instead of being handed to TFDS.

Example:
    >>> datasets.check("bit-finetune", "./photos")
    bit-finetune: error: --dataset='./photos': no such folder.
    >>> train, validation = datasets.load("bit-finetune", "digits", validation_fraction=0.2)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re

from bit_cli import checks, common

log = logging.getLogger(__name__)
DIGITS = "digits"
#: The share of every class of the digits or a folder held out for validation by default.
FOLDER_VALIDATION_FRACTION = 0.2
# What a TFDS name looks like ("oxford_flowers102", "cifar10:3.0.2", "name/config:1.*.*");
# anything else that is not a folder is a path that does not exist.
TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[\w.\-]+)?(:[\w.*]+)?")


def check(program: str, dataset: str) -> None:
    """Ends the command if `dataset` is neither digits, a folder, nor a possible TFDS name.

    Example:
        >>> check("bit-distill", "digits")
    """
    if dataset == DIGITS or os.path.isdir(dataset):
        return
    if os.path.exists(dataset) or not TFDS_NAME.fullmatch(dataset):
        checks.folder_to_read(program, "dataset", dataset)
    if importlib.util.find_spec("tensorflow_datasets") is None:
        common.fail(
            program,
            f"--dataset={dataset!r}: no such folder here; as a TFDS name it needs the "
            "tensorflow_datasets package (pip install tensorflow-datasets).",
        )


def _check_tfds_name(program: str, dataset: str) -> None:
    """Ends the command if `dataset` is not a TFDS dataset name (no folder has that name)."""
    from bit_tf.data.resolve import check_tfds_name

    try:
        check_tfds_name(dataset, "--dataset")
    except ValueError as error:
        common.fail(program, error)


def load(
    program: str,
    dataset: str,
    validation_fraction: float | None,
    seed: int = 0,
    train_split: str = "train",
    validation_split: str = "",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    test_split: str = "test",
):
    """(train, validation, test) `bit_tf.data.ImageSource`s of `dataset`; test is None where
    there is none to keep apart.

    Digits and folders hold out `validation_fraction` (None: `FOLDER_VALIDATION_FRACTION`) of
    every class for validation and have no test. A TFDS dataset validates on a minival of the
    train split and tests on `test_split` (`bit_tf.data.minival.tfds_splits`), unless
    `validation_split` names a split to validate on (then no test; validating on the test
    split itself logs a warning: best.keras is then chosen on the test set).

    Example:
        >>> train, validation, test = load("bit-finetune", "/data/photos", 0.2)
    """
    from bit_tf.data import minival
    from bit_tf.data import pipelines as data
    from bit_tf.data.resolve import resolve

    fraction = validation_fraction or FOLDER_VALIDATION_FRACTION
    if dataset == DIGITS:
        return (*data.load_digits(fraction, seed=seed), None)
    folder = os.path.isdir(dataset)
    if not folder:
        _check_tfds_name(program, dataset)
    options = {"data_dir": data_dir, "manual_dir": manual_dir}
    if folder:
        source = resolve(dataset)
        if source.skipped:
            print(f"skipped {len(source.skipped)} unreadable file(s); see the warning above")
        return (*data.split(source, fraction, seed=seed), None)
    if not validation_split:
        return minival.tfds_splits(
            dataset, train_split, test_split, validation_fraction, seed=seed, **options
        )
    if validation_split == test_split:
        log.warning(
            "%s validates on the %r split, its test split: best.keras is then chosen on the "
            "test set. Leave --validation_split empty to validate on a minival of the train "
            "split.",
            program,
            validation_split,
        )
    train = resolve(dataset, "train", split=train_split, **options)
    return train, resolve(dataset, "validation", split=validation_split, **options), None


def tensorboard_logdir(logdir: str | None, export_dir: str) -> str | None:
    """`logdir` if given, else `<export_dir>/logs` where the tensorboard package is installed.

    Example:
        >>> tensorboard_logdir(None, "bit_finetune")
        'bit_finetune/logs'
    """
    if logdir:
        return logdir
    if importlib.util.find_spec("tensorboard") is None:
        print("no TensorBoard logs: the tensorboard package is not installed")
        return None
    return os.path.join(export_dir, "logs")


__all__ = [
    "DIGITS",
    "FOLDER_VALIDATION_FRACTION",
    "TFDS_NAME",
    "check",
    "load",
    "tensorboard_logdir",
]
