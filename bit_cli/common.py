"""What the bit_cli commands share: absl start-up and `--help`, user errors, checkpoints.

- `run`: a command's console-script entry point (`--help` lists the command's flags);
- `user_errors`: a user's mistake (a checkpoint that does not fit, an existing target) or the
  disk's state (full, read-only, forbidden) ends the command with one line on stderr,
  `<command>: error: <message>`, and exit status 2; with the environment variable
  `BIT_TF_TRACEBACK=1` the traceback is printed above that line. `run` applies it to the
  whole command, with Ctrl-C ending it in one line and status 130 (`leave`);
- `build_model`: the model for `--model` and `--weights`, the architecture read from the
  checkpoint when `--model` is not given (bit-export, bit-finetune and bit-predict);
- `read_class_names`: the value of a `--class_names` flag (a names file or a list);
- `training_ending` and `signals_wait_for`: how a training command (bit-finetune,
  bit-distill) ends: interrupted (the checkpoint's line, status 128 + the signal), diverged
  (status 1), and a signal that arrives while the final model is written (after it).

Example:
    >>> from bit_cli import common
    >>> common.run(main, __name__)  # in a command's `run()`, its console-script entry point
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

from absl import app, flags

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

#: Exit status for settings that cannot work, in every command.
EXIT_BAD_SETTINGS = 2
#: Exit status after Ctrl-C (128 + SIGINT), in every command.
EXIT_INTERRUPTED = 130
#: The environment variable that shows the traceback of a user error (`BIT_TF_TRACEBACK=1`).
TRACEBACK_VARIABLE = "BIT_TF_TRACEBACK"
#: `build_model`'s `num_classes` for "the checkpoint's head size, else --model's default"
#: (`bit_tf.models.FROM_CHECKPOINT`).
HEAD_FROM_CHECKPOINT = "checkpoint"


def declare_main_module_flags(
    module_name: str, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Makes the flags of `module_name` key flags of the main module, so `--help` lists them.

    absl's `--help` lists the key flags of the main module, which it knows by `sys.argv[0]`.
    Under `python -m bit_cli.finetune` that is the module defining the flags; under the
    `bit-finetune` console script it is the script, which defines none, so `--help` would list
    nothing. This declares the module's flags as key flags of `sys.argv[0]` (a no-op where they
    already are), and gives a main module without a docstring (the console script) the
    module's, which `--help` prints as the usage text.

    Example:
        >>> declare_main_module_flags("bit_cli.finetune")
        >>> "--weights" in flags.FLAGS.main_module_help()
        True
    """
    main_module_name = sys.argv[0]  # the name absl's --help looks the key flags up by
    for flag in flag_values.get_key_flags_for_module(module_name):
        flag_values.register_key_flag_for_module(main_module_name, flag)
    main, module = sys.modules.get("__main__"), sys.modules.get(module_name)
    if main is not None and module is not None and not main.__doc__:
        main.__doc__ = module.__doc__


def run(
    main: Callable[[list[str]], int | None],
    module_name: str,
    flags_parser: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """Runs a command's `main` under absl, with `--help` listing the command's own flags, and
    the shared ending (`with_shared_ending`).

    Args:
        main: the command's main function (absl's: takes argv, returns the exit status).
        module_name: the `__name__` of the module defining the command's flags.
        flags_parser: absl's `flags_parser`, where the command parses its flags itself; by
            default `flag_errors_in_one_line(program)`.

    Example:
        >>> def run() -> None:
        ...     common.run(main, __name__)
    """
    declare_main_module_flags(module_name)
    from bit_cli import program_name

    # Under `python -m bit_cli.<name>` the module is __main__: its name is in sys.argv[0].
    name = module_name.rsplit(".", 1)[-1]
    program = program_name() if name == "__main__" else f"bit-{name}"
    parser = flags_parser or flag_errors_in_one_line(program)
    app.run(with_shared_ending(main, program), flags_parser=parser)


def flag_errors_in_one_line(program: str) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing with its errors (a value of the wrong type, an unknown flag) ended
    as every user error is: one line, status 2.

    Example:
        >>> app.run(main, flags_parser=flag_errors_in_one_line("bit-export"))
        bit-export: error: flag --image_size=big: invalid literal for int() with base 10: 'big'
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(program, error)

    return parse


def with_shared_ending(
    main: Callable[[list[str]], int | None], program: str
) -> Callable[[list[str]], int | None]:
    """`main` with the ending every command shares: the user's errors and the disk's
    (`user_errors`) in one line with status 2, and Ctrl-C (SIGINT) in one line with status 130
    (`leave`), also where a library swallows the interruption or keeps threads running.

    Example:
        >>> app.run(with_shared_ending(main, "bit-export"))
    """

    def main_with_ending(argv: list[str]) -> int | None:
        try:
            with user_errors(program):
                return main(argv)
        except KeyboardInterrupt:
            leave(program, "stopped by SIGINT (Ctrl-C).", EXIT_INTERRUPTED)

    return main_with_ending


def leave(program: str, message: str, status: int) -> NoReturn:
    """Ends the command at once with `<program>: <message>` on stderr and exit `status`.

    The run's folder locks are released first (`bit_tf.training.run_lock.release_all`). It leaves
    with `os._exit`: after an interruption TensorFlow's runtime can hang at interpreter
    shutdown, and a library's worker threads (TFDS' downloads retrying) would keep the process
    alive until they end. Files being written are removed before this is reached (the
    writers' `finally` blocks run as the exception unwinds).

    Example:
        >>> leave("bit-export", "stopped by SIGINT (Ctrl-C).", 130)
    """
    from bit_tf.training.run_lock import release_all

    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0") and sys.exc_info()[0]:
        traceback.print_exc()
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    release_all()
    os._exit(status)


@contextlib.contextmanager
def training_ending(program: str) -> Iterator[None]:
    """The end of a training run inside the block: interrupted by a signal, the command leaves
    at once (`leave`) with the checkpoint's line and status 128 + the signal; diverged, with
    `error: <message>` and status 1.

    Example:
        >>> with training_ending("bit-finetune"):
        ...     model, history = bit_tf.finetune(...)
    """
    from bit_tf.training.checkpoints import TrainingDivergedError, TrainingInterruptedError

    try:
        yield
    except TrainingInterruptedError as interrupted:
        # The checkpoint is on disk; leave at once (TensorFlow's runtime can hang at interpreter
        # shutdown after an interrupted fit).
        leave(program, str(interrupted), 128 + interrupted.signal_number)
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


@contextlib.contextmanager
def folder_removed_if_left_empty(path: str | None) -> Iterator[None]:
    """A folder that the block makes at `path` (with empty folders in it) is removed again if
    the block fails, by a user's error or anything else, and leaves it empty: a command that
    is refused writes nothing. A folder that existed before is left as it is.

    Example:
        >>> with folder_removed_if_left_empty("bit_distill"):
        ...     distill_and_write()  # a teacher of other classes: no empty bit_distill/
    """
    made_here = bool(path) and "://" not in path and not os.path.exists(path)
    try:
        yield
    except BaseException:
        if made_here:
            for folder, _, _ in os.walk(path, topdown=False):
                with contextlib.suppress(OSError):  # not empty: something was written there
                    os.rmdir(folder)
        raise


@contextlib.contextmanager
def signals_wait_for(program: str, path: str) -> Iterator[None]:
    """A signal (Ctrl-C, SIGTERM) that arrives inside the block waits for its end (the final
    `path` being written); then the command leaves, naming `path`, with status 128 + the signal.

    Example:
        >>> with signals_wait_for("bit-finetune", "out/model.keras"):
        ...     write_through("out/model.keras", model.save, suffix=".keras")
    """
    from bit_tf.training.interruption import signals_deferred

    with signals_deferred() as deferred:
        yield
    if deferred.received is not None:
        name = signal.Signals(deferred.received).name
        leave(program, f"{name} received: stopped after writing {path}.", 128 + deferred.received)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors that are a user's mistake, not a bug: reported in one line, no traceback.

    A checkpoint that is missing, damaged or does not fit the model, a download that failed,
    an export target that exists, a run folder that holds a run with other settings, is held
    by another run or holds damaged files, and a file the disk could not take.

    Example:
        >>> bit_tf.CheckpointError in user_error_types()
        True
    """
    from bit_tf.models.download import DownloadError
    from bit_tf.models.weights import CheckpointError
    from bit_tf.training.atomic import TargetExistsError
    from bit_tf.training.checkpoints import DamagedRunFileError
    from bit_tf.training.file_errors import FileWriteError
    from bit_tf.training.run_lock import RunLockedError
    from bit_tf.training.run_settings import RunSettingsError

    return (
        CheckpointError,
        DownloadError,
        TargetExistsError,
        RunSettingsError,
        RunLockedError,
        DamagedRunFileError,
        FileWriteError,
    )


def fail(program: str, message: str | BaseException) -> NoReturn:
    """Ends the command with `<program>: error: <message>` on stderr (one line), status 2.

    With `BIT_TF_TRACEBACK=1` in the environment, the traceback of the exception being handled
    (if any) comes first.

    Example:
        >>> fail("bit-export", "--serving_dir needs --kind=classification.")
        bit-export: error: --serving_dir needs --kind=classification.
    """
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0") and sys.exc_info()[0]:
        traceback.print_exc()
    text = " ".join(str(message).split())
    print(f"{program}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_SETTINGS)


@contextlib.contextmanager
def user_errors(program: str, *more: type[BaseException]) -> Iterator[None]:
    """Reports `user_error_types()` and `more` raised inside the block with `fail`.

    Other errors propagate (with their traceback: they are bugs). Give `more` (e.g.
    ValueError) only around code where such an error can only come from the user's settings.

    Example:
        >>> with user_errors("bit-export"):
        ...     model = build_model("", "missing.npz")
        bit-export: error: Checkpoint file 'missing.npz' does not exist.
    """
    try:
        yield
    except (*user_error_types(), *more) as error:
        fail(program, error)
    except Exception as error:
        # A full, read-only or forbidden disk, wherever it is met: the state of the machine.
        message = disk_error_message(error)
        if message is None:
            raise
        fail(program, message)


def disk_error_message(error: BaseException) -> str | None:
    """One sentence for an error that is the disk's state (full, read-only, forbidden:
    `bit_tf.training.file_errors.disk_problem`), naming the path where the error has one; else None.

    Example:
        >>> disk_error_message(OSError(errno.EROFS, "Read-only file system", "out"))
        'Could not write out: the file system is read-only. Choose a folder you can write to.'
    """
    from bit_tf.training.file_errors import FileWriteError, disk_problem

    problem = disk_problem(error)
    if problem is None:
        return None
    if isinstance(error, FileWriteError):
        return str(error)
    path = getattr(error, "filename", None)
    if path:
        return str(FileWriteError.of(error, os.fspath(path)))
    detail = " ".join(str(getattr(error, "message", "") or error).split())[:300]
    return f"{problem[0].upper()}{problem[1:]} ({type(error).__name__}: {detail})."


def read_class_names(value: str) -> list[str] | None:
    """Class names from a `--class_names` flag: a text file with one name per line, or a
    comma-separated list; None for an empty value.

    Raises:
        ValueError: the file cannot be read or holds no names, or a value that looks like a
            file's path ("labels.txt", "data/names") names no file.

    Example:
        >>> read_class_names("daisy,rose,tulip")
        ['daisy', 'rose', 'tulip']
    """
    from bit_tf.models.class_names import read_class_names_file

    if not value:
        return None
    if os.path.isfile(value):
        return read_class_names_file(value)
    looks_like_a_path = os.sep in value or os.path.splitext(value)[1] in (".txt", ".csv")
    if "," not in value and looks_like_a_path:
        raise ValueError(f"--class_names={value!r}: no such file.")
    return [name.strip() for name in value.split(",")]


def refuse_unknown_model_file(
    program: str, export_dir: str, checkpoint_dir: str, overwrite: bool
) -> None:
    """Ends the command if `export_dir` holds a model.keras that no run recorded in
    `checkpoint_dir` explains (its checkpoints are gone, or another program wrote it): it would
    be replaced without a word. `overwrite` (--overwrite) lets it be replaced.

    Example:
        >>> refuse_unknown_model_file("bit-distill", "out", "out/checkpoints", False)
        bit-distill: error: out/model.keras exists and out/checkpoints records no run that made
        it; use --overwrite to replace it, or another --export_dir.
    """
    from bit_tf.training.checkpoints import read_progress

    path = os.path.join(export_dir, "model.keras")
    if overwrite or not os.path.exists(path):
        return
    if os.path.isdir(checkpoint_dir) and read_progress(checkpoint_dir) is not None:
        return  # the run's settings are compared with the command's once the data is read
    fail(
        program,
        f"{path} exists and {checkpoint_dir} records no run that made it; use --overwrite to "
        "replace it, or another --export_dir.",
    )


def check_model_file(program: str, path: str, checkpoint_dir: str) -> None:
    """Ends the command with one line if the `model.keras` of a finished run, `path`, cannot be
    read back, saying how to write it again from the run's checkpoint in `checkpoint_dir`.

    Example:
        >>> check_model_file("bit-finetune", "bit_finetune/model.keras",
        ...                  "bit_finetune/checkpoints")
    """
    import keras

    try:
        keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 (a cut zip, damaged weights: the file's fault)
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        fail(
            program,
            f"{path} is damaged ({reason}). Delete it to write it again from "
            f"{os.path.join(checkpoint_dir, 'last.keras')} (the finished run), or run with "
            "--overwrite to train again.",
        )


def build_model(
    model_name: str | None,
    weights: str | None,
    num_classes: int | None | str = HEAD_FROM_CHECKPOINT,
    dtype: str | None = None,
) -> keras.Model:
    """The model for a command's `--model` and `--weights`, with the weights loaded: a call to
    `bit_tf.create_model` (`bit_tf.models.create.from_checkpoint` for a file), its errors in
    the words of the flags.

    Args:
        model_name: e.g. "BiT-M-R50x1"; empty or None: the checkpoint's architecture.
        weights: what `bit_tf.models.from_checkpoint` reads (an official `.npz`, timm's
            checkpoint, a `.keras` file bit_tf wrote); empty or None: random initialisation
            (needs `model_name`).
        num_classes: the head size; None for the feature vector (pre-logits);
            `HEAD_FROM_CHECKPOINT` for the checkpoint's head, else the upstream default of
            `model_name`.
        dtype: the Keras dtype policy to build the model with (e.g. "mixed_bfloat16"); a
            `.keras` file keeps its own.

    Raises:
        CheckpointError: the checkpoint is missing, damaged, not a BiT checkpoint, or does not
            fit `model_name` (one line naming both architectures and the flags' way out).
        ValueError: neither `model_name` nor `weights`; `HeadlessCheckpointError`:
            `HEAD_FROM_CHECKPOINT` for a checkpoint without a head and no `model_name`.

    Example:
        >>> build_model("", "/data/BiT-M-R50x1.npz", num_classes=None).output_shape
        (None, 2048)
    """
    import bit_tf
    from bit_tf.models import create
    from bit_tf.models.weights import CheckpointError

    if not model_name and not weights:
        raise ValueError("Give --model, --weights, or both.")
    if not weights:
        if num_classes == HEAD_FROM_CHECKPOINT:
            num_classes = bit_tf.models.default_num_classes(model_name)
        model = bit_tf.create_model(model_name, num_classes=num_classes, dtype=dtype)
        log.warning("No --weights: %s has randomly initialised weights.", model.name)
        return model
    options = {} if weights.endswith(".keras") else {"dtype": dtype}
    try:
        return create.from_checkpoint(weights, model_name or None, num_classes, **options)
    except create.ArchitectureMismatchError as error:
        raise CheckpointError(error.words(f"--model={model_name}", "leave out --model")) from None
    except create.HeadMismatchError as error:
        raise CheckpointError(
            f"Model file {error.path!r} has a head of {error.classes} classes, not "
            f"{error.asked}: leave out --num_classes to keep its head."
        ) from None
    except create.HeadlessCheckpointError:
        raise create.HeadlessCheckpointError(
            f"Checkpoint {weights!r} has no head to take the number of classes from; "
            "give --num_classes."
        ) from None
