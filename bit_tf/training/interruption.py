"""The exception of a training run that SIGTERM or SIGINT stopped after writing a checkpoint,
and `signals_deferred`, which keeps those signals from breaking a file being written.

Fine-tuning (`bit_tf.finetune.TrainingInterruptedError`) and pre-training
(`bit_tf.pretrain.TrainingInterrupted`) raise subclasses of `StoppedBySignal`, which differ only
in their message; a program can catch either, or this base class for both.

Example:
    >>> try:
    ...     bit_tf.finetune("BiT-M-R50x1", train, checkpoint_dir="runs/pets")
    ... except StoppedBySignal as stopped:
    ...     os._exit(128 + stopped.signal_number)
"""

from __future__ import annotations

import signal
import threading


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


class signals_deferred:  # noqa: N801 (used as a context manager, reads like a phrase)
    """Records SIGTERM and SIGINT arriving inside the block instead of letting them interrupt
    it (a model file half written); `received` is the first one's number, else None.

    On the main thread only; elsewhere signals cannot arrive, and the block runs as it is.

    Example:
        >>> with signals_deferred() as deferred:
        ...     model.save("runs/pets/model.keras")
        >>> if deferred.received is not None:
        ...     os._exit(128 + deferred.received)
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, number, frame):
        if self.received is None:
            self.received = number

    def __enter__(self) -> signals_deferred:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> bool:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        return False
