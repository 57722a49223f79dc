"""The checkpoints of a fine-tuning run, its NaN guard and its SIGTERM/SIGINT handling.

`bit_tf.finetune` keeps, in its `checkpoint_dir`, `last.keras` (model and optimizer, written
atomically at every validation and when a signal arrives), `best.keras` (best validation
accuracy) and `progress.json` (the run's settings, its step, whether it finished, and its best
validation accuracy). `Checkpointer` is the Keras callback that writes them, stops training
with `TrainingDivergedError` on a NaN or infinite loss, and with `TrainingInterruptedError`
after a checkpoint when `signals_caught` recorded a signal.

Example:
    >>> progress = {"settings": settings, "step": 0, "finished": False}
    >>> run = RunProgress(checkpoint_dir="runs/pets", progress=progress, total_steps=500,
    ...                   accumulation=1, base_lr=0.003)
    >>> with signals_caught(run, enabled=True):
    ...     model.fit(batches, epochs=10, callbacks=[Checkpointer(run)])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import keras
import numpy as np

from bit_tf.training.atomic import write_text, write_through
from bit_tf.training.interruption import TrainingInterruptedError
from bit_tf.training.run_settings import check_same_run
from bit_tf.training.signals import StopSignals

log = logging.getLogger("bit_tf.finetune")

LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
PROGRESS_FILE = "progress.json"


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is left as it was.

    Example:
        >>> try:
        ...     bit_tf.finetune("BiT-M-R50x1", train, base_lr=3.0, checkpoint_dir="runs/pets")
        ... except TrainingDivergedError as error:
        ...     print(error)  # the step, the checkpoint kept, and what to change
    """


def atomic_save(model: keras.Model, path: str) -> None:
    """Saves `model` to `path` (a `.keras` file) through `bit_tf.training.atomic`, so that
    `path` always holds a whole model.

    Raises:
        FileWriteError: the disk is full, read-only or forbidden; the temporary file is
            removed and `path` left as it was.

    Example:
        >>> atomic_save(model, "runs/pets/last.keras")
    """
    write_through(path, model.save, suffix=".keras")


def write_progress(checkpoint_dir: str, progress: dict) -> None:
    """Writes `progress` to `checkpoint_dir/progress.json` atomically.

    Raises:
        FileWriteError: the disk is full, read-only or forbidden (the old file is kept).

    Example:
        >>> write_progress("runs/pets", {"settings": settings, "step": 50, "finished": False})
    """
    write_text(os.path.join(checkpoint_dir, PROGRESS_FILE), json.dumps(progress, indent=1))


class DamagedRunFileError(ValueError):
    """A file of a run folder (`progress.json`, the checkpoints) cannot be read; the message
    names it, says what is wrong, and what to do.

    Example:
        >>> try:
        ...     read_progress("runs/pets")
        ... except DamagedRunFileError as error:
        ...     print(error)  # runs/pets/progress.json is damaged (...): ...
    """


_START_AGAIN = (
    "start the run again there with overwrite=True (the commands' --overwrite), which "
    "replaces its checkpoints, or use another folder"
)

#: The fields of progress.json, with their types and whether every run has them.
_PROGRESS_FIELDS = {
    "settings": (dict, True),
    "step": (int, True),
    "finished": (bool, True),
    "best_val_accuracy": ((int, float), False),
    "best_step": (int, False),
}


def read_progress(checkpoint_dir: str) -> dict | None:
    """The `progress.json` of `checkpoint_dir`, or None where there is none.

    Raises:
        DamagedRunFileError: the file is cut, not JSON, or holds fields of the wrong type.

    Example:
        >>> read_progress("runs/pets")["step"]
        50
    """
    path = os.path.join(checkpoint_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            progress = json.load(file)
    except (UnicodeDecodeError, ValueError) as error:
        what = "it is empty" if os.path.getsize(path) == 0 else f"not JSON: {error}"
        raise DamagedRunFileError(
            f"{path} is damaged ({what}); it records the run in {checkpoint_dir}: {_START_AGAIN}."
        ) from None
    problem = _progress_problem(progress)
    if problem:
        raise DamagedRunFileError(
            f"{path} is damaged ({problem}); it records the run in {checkpoint_dir}: "
            f"{_START_AGAIN}."
        )
    return progress


def _progress_problem(progress) -> str | None:
    """What is wrong with the contents of a progress.json, else None."""
    if not isinstance(progress, dict):
        return f"it holds a {type(progress).__name__}, not an object of the run's fields"
    for name, (kinds, required) in _PROGRESS_FIELDS.items():
        if name not in progress:
            if required:
                return f"it has no {name!r}"
            continue
        value = progress[name]
        # True and False are ints to Python, but no step count.
        wrong_bool = isinstance(value, bool) and kinds is not bool
        if wrong_bool or not isinstance(value, kinds):
            return f"{name!r} is {value!r}, not {_KIND_NAMES.get(kinds, 'a number')}"
        if name in ("step", "best_step") and value < 0:
            return f"{name!r} is {value}, a negative step"
    return None


_KIND_NAMES = {dict: "an object", int: "a whole number", bool: "true or false"}


#: Settings a run records since they became choices, with the value every run had before: a
#: run recorded without them resumes when it is started with those values, and is refused,
#: naming the setting, when it is started with others.
SETTINGS_BEFORE_RECORDED = {
    "hyperrule": "lecture",
    "eval_resize": "resize",
    "recipe": "legacy",
    "recipe_source": "bit-tf before issue 32 (lengths: bit_tf.distill.schedule.SCHEDULES)",
    "variant": "function_matching",
    "teacher_crop": None,
}


def with_settings_before_recorded(found: dict, settings: dict) -> dict:
    """The `found` settings of a run, completed with `SETTINGS_BEFORE_RECORDED` for the
    settings the run being started records and the found run predates.

    Example:
        >>> with_settings_before_recorded({"steps": 50}, {"steps": 50, "hyperrule": "lecture"})
        {'hyperrule': 'lecture', 'steps': 50}
    """
    before = {
        name: value
        for name, value in SETTINGS_BEFORE_RECORDED.items()
        if name in settings and name not in found
    }
    return {**before, **found}


def find_resumable(
    checkpoint_dir: str, settings: dict, overwrite: bool = False
) -> tuple[str, dict] | None:
    """(`last.keras`, its progress) of the run with these `settings` in `checkpoint_dir`, or
    None where there is none (the folder is made if missing).

    A finished run is returned too (its progress says `finished`): resuming it trains no
    further. With `overwrite`, a run found there is deleted (its `last.keras`, `best.keras`
    and `progress.json`) and None returned.

    Raises:
        RunSettingsError: the run there has other settings (another dataset, other steps...);
            the message names each difference.
        DamagedRunFileError: its `progress.json` cannot be read.

    Example:
        >>> path, progress = find_resumable("runs/pets", settings)
        >>> path, progress["step"]
        ('runs/pets/last.keras', 50)
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    if overwrite:
        for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, PROGRESS_FILE):
            if os.path.exists(os.path.join(checkpoint_dir, name)):
                os.remove(os.path.join(checkpoint_dir, name))
        return None
    found = read_progress(checkpoint_dir)
    if not found:
        return None
    recorded = with_settings_before_recorded(found.get("settings", {}), settings)
    # Compared as JSON holds them (tuples become lists).
    check_same_run(checkpoint_dir, recorded, json.loads(json.dumps(settings)))
    last_path = os.path.join(checkpoint_dir, LAST_CHECKPOINT)
    best_path = os.path.join(checkpoint_dir, BEST_CHECKPOINT)
    if not os.path.exists(last_path) and not os.path.exists(best_path):
        return None
    return last_path, found


def load_resumable(path: str, progress: dict, accumulation: int = 1) -> tuple[keras.Model, dict]:
    """(model, progress) to resume a run from its checkpoint `path` (`find_resumable`'s),
    logging what it resumes (or that the run is finished).

    Where `last.keras` cannot be read (damaged, cut, missing), the run resumes from
    `best.keras` beside it, at the step it holds, with a warning saying so. The step is the
    one the model's optimizer counted (a run stopped between writing `last.keras` and
    `progress.json` resumes where its model is).

    Raises:
        DamagedRunFileError: neither checkpoint can be read: names both and the way out.

    Example:
        >>> model, progress = load_resumable("runs/pets/last.keras", progress)
    """
    checkpoint_dir = os.path.dirname(path)
    problems = []
    candidates = [(path, progress)]
    if progress.get("best_step") is not None:
        best = dict(progress, step=progress["best_step"], finished=False)
        candidates.append((os.path.join(checkpoint_dir, BEST_CHECKPOINT), best))
    for candidate, candidate_progress in candidates:
        try:
            model = _load_checkpoint(candidate)
        except DamagedRunFileError as error:
            problems.append(str(error))
            continue
        if problems:
            log.warning("%s Using %s instead.", problems[0], candidate)
        candidate_progress = _with_model_step(model, candidate, candidate_progress, accumulation)
        _log_resumption(checkpoint_dir, candidate, candidate_progress)
        return model, candidate_progress
    raise DamagedRunFileError(
        f"{' '.join(problems)} No whole checkpoint is left in {checkpoint_dir}: {_START_AGAIN}."
    )


def _log_resumption(checkpoint_dir: str, path: str, progress: dict) -> None:
    if progress.get("finished"):
        log.warning(
            "%s holds this run, finished at step %d: nothing to train (overwrite=True "
            "starts it again).",
            checkpoint_dir,
            progress["step"],
        )
    else:
        total = progress["settings"].get("total_steps")
        log.warning("Resuming from %s at step %d of %s.", path, progress["step"], total)


def _load_checkpoint(path: str) -> keras.Model:
    """The model in the checkpoint `path`, or DamagedRunFileError saying why it cannot be."""
    if not os.path.isfile(path):
        raise DamagedRunFileError(f"{path} is missing.")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 (a damaged zip, cut weights: the file's fault)
        # Keras says "File not found" for a file that is there but not a whole zip.
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        raise DamagedRunFileError(f"{path} cannot be read ({reason}).") from error


def _with_model_step(model: keras.Model, path: str, progress: dict, accumulation: int) -> dict:
    """`progress` with the step the checkpoint's optimizer counted, where that differs."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return progress
    step = int(keras.ops.convert_to_numpy(optimizer.iterations)) // max(1, accumulation)
    if step == progress["step"]:
        return progress
    log.warning(
        "%s holds step %d, but its progress.json says %d (a run stopped between the two "
        "writes): resuming from step %d.",
        path,
        step,
        progress["step"],
        step,
    )
    return dict(progress, step=step, finished=False)


@dataclasses.dataclass
class RunProgress:
    """What the `Checkpointer` of a run knows and updates.

    Attributes:
        checkpoint_dir: where checkpoints go; None for none.
        progress: the contents of `progress.json` ({"settings", "step", "finished", and
            "best_val_accuracy", "best_step" once validated}).
        total_steps: the optimizer steps of the whole run.
        accumulation: micro-batches per optimizer step.
        base_lr: the run's base learning rate (named in the NaN error).
        signal_number: the signal `signals_caught` recorded, else None.

    Example:
        >>> run = RunProgress(None, {"settings": {}, "step": 0, "finished": False}, 500, 1, 0.003)
    """

    checkpoint_dir: str | None
    progress: dict
    total_steps: int
    accumulation: int
    base_lr: float
    signal_number: int | None = None


class Checkpointer(keras.callbacks.Callback):
    """Counts steps, guards against NaN, writes last/best checkpoints, honours signals.

    Example:
        >>> model.fit(batches, epochs=10, callbacks=[Checkpointer(run)])
    """

    def __init__(self, run: RunProgress):
        super().__init__()
        self.run = run
        self.micro_step = run.progress["step"] * run.accumulation
        self.signal_number = None

    def _step(self) -> int:
        return self.micro_step // self.run.accumulation

    def _save_last(self, finished: bool = False) -> None:
        directory = self.run.checkpoint_dir
        if directory is None:
            return
        atomic_save(self.model, os.path.join(directory, LAST_CHECKPOINT))
        progress = dict(self.run.progress, step=self._step(), finished=finished)
        self.run.progress = progress
        write_progress(directory, progress)

    def on_train_batch_end(self, batch, logs=None):
        self.micro_step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            self.model.stop_training = True
            raise self._diverged(float(np.asarray(loss)))
        at_update = self.micro_step % self.run.accumulation == 0
        if self.run.signal_number is not None and at_update:
            self.signal_number = self.run.signal_number
            self._save_last()
            self.model.stop_training = True
            raise TrainingInterruptedError(
                self.signal_number,
                self._step(),
                os.path.join(self.run.checkpoint_dir, LAST_CHECKPOINT),
            )

    def _diverged(self, loss: float) -> TrainingDivergedError:
        progress = self.run.progress
        kept = (
            f"The last good checkpoint, {self.run.checkpoint_dir}/{LAST_CHECKPOINT} "
            f"(step {progress['step']}), is left intact."
            if self.run.checkpoint_dir and progress.get("step")
            else "No checkpoint was written before it."
        )
        return TrainingDivergedError(
            f"The training loss became {loss} at step {self._step()} of "
            f"{self.run.total_steps}; training stopped. {kept} Lower base_lr (now "
            f"{self.run.base_lr}) or check the data for NaN or infinite values."
        )

    def on_epoch_end(self, epoch, logs=None):
        if self.signal_number is not None:
            return
        finished = self._step() >= self.run.total_steps
        directory = self.run.checkpoint_dir
        accuracy = (logs or {}).get("val_accuracy")
        if directory is not None and accuracy is not None:
            best = self.run.progress.get("best_val_accuracy")
            if best is None or float(accuracy) > best:
                atomic_save(self.model, os.path.join(directory, BEST_CHECKPOINT))
                self.run.progress = dict(
                    self.run.progress, best_val_accuracy=float(accuracy), best_step=self._step()
                )
        self._save_last(finished=finished)


def signals_caught(run: RunProgress, enabled: bool) -> StopSignals:
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop (recorded in
    `run.signal_number`). Later ones (people press Ctrl-C two or three times) are reported and
    change nothing, so they cannot break the checkpoint being written: the run stops once it is
    complete. SIGKILL is the way to stop at once.

    The run's `bit_tf.training.signals.StopSignals`; handlers are installed only when
    `enabled` and on the main thread.

    Example:
        >>> with signals_caught(run, enabled=run.checkpoint_dir is not None):
        ...     model.fit(batches, callbacks=[Checkpointer(run)])
    """

    def record(number: int) -> None:
        run.signal_number = number

    return StopSignals(
        first="{signal} received: writing a checkpoint at the next step, then stopping.",
        again=(
            "{signal} received again: still writing the checkpoint; the run stops once it is "
            "complete (SIGKILL stops at once and loses it)."
        ),
        on_stop=record,
        enabled=enabled,
        logger=log,
    )
