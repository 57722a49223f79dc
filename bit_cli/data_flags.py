"""The data flags of the training commands (bit-finetune, bit-distill): which data set, its TFDS
folders and splits. Importing this module defines them once; a command adopts them as its own
so that its `--help` lists them.

Example:
    >>> from bit_cli import data_flags
    >>> flags.adopt_module_key_flags(data_flags)  # in the command's module
"""

from __future__ import annotations

from absl import flags

from bit_cli.datasets import DIGITS

flags.DEFINE_string(
    "dataset",
    DIGITS,
    f"'{DIGITS}' (scikit-learn's handwritten digits, offline), a folder with one subfolder per "
    "class, or a TFDS name such as oxford_flowers102.",
)
flags.DEFINE_string("data_dir", None, "TFDS data folder (default: ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "TFDS folder of manually downloaded files.")
flags.DEFINE_string("train_split", "train", "TFDS split to train on.")
flags.DEFINE_string(
    "validation_split",
    "",
    "TFDS split to validate on (and choose best.keras by). Default: a minival of the train "
    "split (ImageNet: its last 1%; a data set's own 'validation' split where it has one; else "
    "--validation_fraction of every class), and --test_split evaluated once at the end. "
    "'test' validates on the test split, with a warning.",
)
flags.DEFINE_string(
    "test_split", "test", "TFDS split evaluated once after training (ImageNet: validation)."
)
