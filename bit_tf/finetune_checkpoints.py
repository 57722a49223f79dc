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
import signal
import threading

import keras
import numpy as np

from bit_tf.interruption import StoppedBySignal
from bit_tf.run_settings import check_same_run

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


class TrainingInterruptedError(StoppedBySignal):
    """SIGTERM or SIGINT stopped fine-tuning after a checkpoint was written.

    Attributes:
        signal_number: the signal received (signal.SIGTERM or signal.SIGINT).
        step: the optimizer step the checkpoint holds.
        checkpoint: the path of the checkpoint; run the same call again to resume from it.

    Example:
        >>> try:
        ...     bit_tf.finetune("BiT-M-R50x1", train, checkpoint_dir="runs/pets")
        ... except TrainingInterruptedError as interrupted:
        ...     os._exit(128 + interrupted.signal_number)
    """

    message = (
        "{signal} received: stopped at step {step} after writing {checkpoint}. Run the same "
        "command again to resume from there."
    )


def atomic_save(model: keras.Model, path: str) -> None:
    """Saves `model` to `path` (a `.keras` file) through a temporary file, so that `path`
    always holds a whole model.

    Example:
        >>> atomic_save(model, "runs/pets/last.keras")
    """
    temporary = path[: -len(".keras")] + ".partial.keras"
    model.save(temporary)
    os.replace(temporary, path)


def write_progress(checkpoint_dir: str, progress: dict) -> None:
    """Writes `progress` to `checkpoint_dir/progress.json` atomically.

    Example:
        >>> write_progress("runs/pets", {"settings": settings, "step": 50, "finished": False})
    """
    path = os.path.join(checkpoint_dir, PROGRESS_FILE)
    with open(path + ".partial", "w") as file:
        json.dump(progress, file, indent=1)
    os.replace(path + ".partial", path)


def read_progress(checkpoint_dir: str) -> dict | None:
    """The `progress.json` of `checkpoint_dir`, or None where there is none.

    Example:
        >>> read_progress("runs/pets")["step"]
        50
    """
    path = os.path.join(checkpoint_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


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
    # Compared as JSON holds them (tuples become lists).
    check_same_run(checkpoint_dir, found.get("settings", {}), json.loads(json.dumps(settings)))
    last_path = os.path.join(checkpoint_dir, LAST_CHECKPOINT)
    if not os.path.exists(last_path):
        return None
    return last_path, found


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


class signals_caught:  # noqa: N801 (used as a context manager, reads like a phrase)
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop (recorded in
    `run.signal_number`). Later ones (people press Ctrl-C two or three times) are reported and
    change nothing, so they cannot break the checkpoint being written: the run stops once it is
    complete. SIGKILL is the way to stop at once.

    Handlers are installed only when `enabled` and on the main thread.

    Example:
        >>> with signals_caught(run, enabled=run.checkpoint_dir is not None):
        ...     model.fit(batches, callbacks=[Checkpointer(run)])
    """

    def __init__(self, run: RunProgress, enabled: bool):
        self.run = run
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous = {}

    def _handle(self, number, frame):
        if self.run.signal_number is not None:
            log.warning(
                "%s received again: still writing the checkpoint; the run stops once it is "
                "complete (SIGKILL stops at once and loses it).",
                signal.Signals(number).name,
            )
            return
        self.run.signal_number = number
        log.warning(
            "%s received: writing a checkpoint at the next step, then stopping.",
            signal.Signals(number).name,
        )

    def __enter__(self):
        if self.enabled:
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False
