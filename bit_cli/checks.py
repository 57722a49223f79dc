"""Checks of a command's flag values before any work: a value that cannot work ends the command
with one line naming the flag and the value (`bit_cli.common.fail`, status 2).

They import neither TensorFlow nor Keras, so a wrong path or number is reported at once.

Example:
    >>> from bit_cli import checks
    >>> checks.positive("bit-finetune", steps=FLAGS.steps, batch_size=FLAGS.batch_size)
    >>> checks.folder_to_write("bit-finetune", "export_dir", FLAGS.export_dir)
"""

from __future__ import annotations

import os
import tempfile

from bit_cli.common import fail


def positive(program: str, **values: float | None) -> None:
    """Ends the command if a given value (None: not given) is zero or negative.

    Example:
        >>> positive("bit-finetune", steps=0)
        bit-finetune: error: --steps must be positive, got 0.
    """
    for name, value in values.items():
        if value is not None and value <= 0:
            fail(program, f"--{name} must be positive, got {value}.")


def not_negative(program: str, **values: float | None) -> None:
    """Ends the command if a given value (None: not given) is negative.

    Example:
        >>> not_negative("bit-finetune", base_lr=-0.1)
        bit-finetune: error: --base_lr must not be negative, got -0.1.
    """
    for name, value in values.items():
        if value is not None and value < 0:
            fail(program, f"--{name} must not be negative, got {value}.")


def model_name(program: str, name: str | None) -> None:
    """Ends the command if `name` (empty: none given) is no model name, released checkpoint
    name or name of timm's copy of one ("resnetv2_50x1_bit.goog_in21k").

    Example:
        >>> model_name("bit-export", "BiT-M-R51x1")
        bit-export: error: --model: Unknown model name 'BiT-M-R51x1': ...
    """
    from bit_tf.models.registry import find_release, find_timm_release, parse_model_name

    if not name or find_release(name) is not None or find_timm_release(name) is not None:
        return
    try:
        parse_model_name(name)
    except ValueError as error:
        fail(program, f"--model: {error}")


def folder_to_read(program: str, flag: str, path: str) -> None:
    """Ends the command if `path` is not an existing folder.

    Example:
        >>> folder_to_read("bit-finetune", "dataset", "photos.zip")
        bit-finetune: error: --dataset='photos.zip' is a file, not a folder.
    """
    if os.path.isfile(path):
        fail(program, f"--{flag}={path!r} is a file, not a folder.")
    if not os.path.isdir(path):
        fail(program, f"--{flag}={path!r}: no such folder.")


def folder_to_write(program: str, flag: str, path: str | None) -> None:
    """Ends the command if `path` (empty: none given), or a folder above it, is an existing file,
    or if no folder can be made where it would be (a read-only disk, a forbidden folder, a
    file system such as /proc): a folder is made there and removed again, nothing is left.

    Example:
        >>> folder_to_write("bit-export", "export_dir", "notes.txt")
        bit-export: error: --export_dir='notes.txt' is a file; give a folder (it is made if
        missing).
    """
    if not path or "://" in path:
        return
    folder = os.path.abspath(path)
    while folder != os.path.dirname(folder):
        if os.path.isfile(folder):
            where = (
                "is a file" if folder == os.path.abspath(path) else f"is under the file {folder}"
            )
            fail(program, f"--{flag}={path!r} {where}; give a folder (it is made if missing).")
        folder = os.path.dirname(folder)
    _folder_can_be_made(program, flag, path)


def _folder_can_be_made(program: str, flag: str, path: str) -> None:
    """Ends the command unless a folder can be made in the nearest existing folder of `path`."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    from bit_tf.training.file_errors import FileWriteError, disk_problem

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bit-tf-write-check-", dir=existing))
    except OSError as error:
        if disk_problem(error) is not None:  # read-only, forbidden, full: said as every command
            fail(program, FileWriteError.of(error, path))  # says a write refused by the disk
        fail(
            program,
            f"--{flag}={path!r} cannot be written: no folder can be made in {existing} "
            f"({error.strerror}).",
        )


def between_zero_and_one(program: str, **values: float) -> None:
    """Ends the command if a value is not strictly between 0 and 1 (None: not given, passes).

    Example:
        >>> between_zero_and_one("bit-finetune", validation_fraction=1.5)
        bit-finetune: error: --validation_fraction must be between 0 and 1, got 1.5.
    """
    for name, value in values.items():
        if value is not None and not 0 < value < 1:
            fail(program, f"--{name} must be between 0 and 1, got {value}.")


def training_run(program: str, flag_values, batch_size: int) -> None:
    """The checks of the flags every training command shares (bit-finetune, bit-distill):
    batch size, steps, crop, validation interval and accumulation positive; learning rate,
    warm-up and MixUp not negative; --validation_fraction between 0 and 1;
    --gradient_accumulation_steps dividing the batch size (`batch_size`, the one the run will
    use); and the folders it writes (--export_dir, --checkpoint_dir, --logdir) not being files.

    Example:
        >>> training_run("bit-finetune", FLAGS, FLAGS.batch_size or 512)
    """
    shared = ("batch_size", "steps", "crop", "validation_every", "gradient_accumulation_steps")
    positive(program, **{name: getattr(flag_values, name) for name in shared})
    rates = ("base_lr", "warmup_steps", "mixup_alpha")
    not_negative(program, **{name: getattr(flag_values, name) for name in rates})
    between_zero_and_one(program, validation_fraction=flag_values.validation_fraction)
    accumulation = flag_values.gradient_accumulation_steps
    if accumulation and batch_size % accumulation:
        fail(
            program,
            f"--gradient_accumulation_steps={accumulation} must divide the batch size "
            f"{batch_size} (--batch_size).",
        )
    for flag in ("export_dir", "checkpoint_dir", "logdir"):
        folder_to_write(program, flag, getattr(flag_values, flag))
