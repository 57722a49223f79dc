"""The exception of a training run that SIGTERM or SIGINT stopped after writing a checkpoint,
and `signals_deferred`, which keeps those signals from breaking a file being written.

Fine-tuning, distillation and pre-training raise `TrainingInterruptedError` (pre-training's
old name `TrainingInterrupted` is the same class); `StoppedBySignal` is its base.

Example:
    >>> try:
    ...     bit_tf.finetune("BiT-M-R50x1", train, checkpoint_dir="runs/pets")
    ... except StoppedBySignal as stopped:
    ...     os._exit(128 + stopped.signal_number)
"""

from __future__ import annotations

import signal

from bit_tf.training.signals import StopSignals


class StoppedBySignal(Exception):  # noqa: N818 (it is not an error: a clean stop)
    """SIGTERM or SIGINT stopped training after a checkpoint was written; run again to resume.

    Subclasses set `message`, a format string of `{signal}` (the signal's name), `{step}` and
    `{checkpoint}`.

    Attributes:
        signal_number: the signal received (signal.SIGTERM or signal.SIGINT).
        step: the step the checkpoint holds.
        checkpoint: the path of the checkpoint written (None where this process wrote none).

    Example:
        >>> stopped = StoppedBySignal(signal.SIGTERM, 120, "runs/pets/last.keras")
        >>> stopped.step, stopped.checkpoint
        (120, 'runs/pets/last.keras')
    """

    message = "{signal} stopped training at step {step}; checkpoint {checkpoint}."

    def __init__(self, signal_number: int, step: int, checkpoint: str | None):
        self.signal_number = signal_number
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        super().__init__(self.message.format(signal=name, step=step, checkpoint=checkpoint))


class TrainingInterruptedError(StoppedBySignal):
    """SIGTERM or SIGINT stopped a training run (fine-tuning, distillation, pre-training) after
    a checkpoint was written; run the same call or command again to resume from it.

    `bit_tf.pretrain.TrainingInterrupted` is this class under the name pre-training used.

    Attributes:
        signal_number: the signal received (signal.SIGTERM or signal.SIGINT).
        step: the optimizer step the checkpoint holds.
        checkpoint: the path of the checkpoint (None on a worker that is not the chief).
        checkpoint_path: the same, under the name pre-training has used.

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

    def __init__(self, signal_number: int, step: int, checkpoint: str | None):
        if checkpoint is None:  # a worker that is not the chief: the chief wrote it
            self.message = (
                "{signal} received: stopped at step {step} (the chief wrote the checkpoint). "
                "Run the same command again to resume from there."
            )
        super().__init__(signal_number, step, checkpoint)

    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint written (`checkpoint`, under the name pre-training has used)."""
        return self.checkpoint


def signals_deferred() -> StopSignals:
    """Records SIGTERM and SIGINT arriving inside the block instead of letting them interrupt
    it (a model file half written); `received` is the first one's number, else None.

    A `bit_tf.training.signals.StopSignals` that logs nothing. On the main thread only;
    elsewhere signals cannot arrive, and the block runs as it is.

    Example:
        >>> with signals_deferred() as deferred:
        ...     model.save("runs/pets/model.keras")
        >>> if deferred.received is not None:
        ...     os._exit(128 + deferred.received)
    """
    return StopSignals()
