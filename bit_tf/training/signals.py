"""The one recorder of stop signals: the first SIGTERM or SIGINT asks a run to stop, later
ones are reported and change nothing.

A training run must not die in the middle of writing a checkpoint. `StopSignals` replaces the
handlers of SIGTERM and SIGINT while its block runs: the first signal is recorded in
`received` (and handed to `on_stop`, where given) so that the run can write a checkpoint at its
next step and stop; a signal that comes again (people press Ctrl-C two or three times) only
logs `again`, so the checkpoint being written is finished whole. SIGKILL is the way to stop at
once. Fine-tuning and distillation (`bit_tf.training.checkpoints.signals_caught`),
pre-training's loop and the commands' final writes (`bit_tf.training.interruption.
signals_deferred`) all record their signals with it.

Handlers are installed only on the main thread (elsewhere Python delivers no signals) and only
when `enabled`; the previous handlers come back when the block ends.

Example:
    >>> with StopSignals(first="{signal} received: stopping at the next step.") as signals:
    ...     while signals.received is None and step < total:
    ...         step = train_one_step()
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

__all__ = ["SIGNALS", "StopSignals"]

#: The signals that ask a run to stop.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records the first SIGTERM/SIGINT in `received`; reports later ones (see the module).

    Args:
        first: the warning logged for the first signal, a format string of `{signal}` (its
            name); None logs nothing.
        again: the warning logged for each later one; None logs nothing.
        on_stop: called with the first signal's number, in the handler.
        enabled: install the handlers (else the block runs with the handlers it had).
        logger: where the warnings go.

    Attributes:
        received: the first signal's number, else None.

    Example:
        >>> with StopSignals(again="{signal} received again: still saving.") as signals:
        ...     model.save("model.keras")
        >>> signals.received is None
        True
    """

    SIGNALS = SIGNALS

    def __init__(
        self,
        first: str | None = None,
        again: str | None = None,
        on_stop: Callable[[int], None] | None = None,
        enabled: bool = True,
        logger: logging.Logger | None = None,
    ):
        self.received: int | None = None
        self.first = first
        self.again = again
        self.on_stop = on_stop
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.logger = logger or logging.getLogger(__name__)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            if self.again:
                self.logger.warning(self.again.format(signal=name))
            return
        self.received = number
        if self.on_stop is not None:
            self.on_stop(number)
        if self.first:
            self.logger.warning(self.first.format(signal=name))

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> bool:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False
