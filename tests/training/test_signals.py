"""Ctrl-C pressed two or three times while a run writes its checkpoint: the first asks for the
checkpoint, the later ones are reported and change nothing (bit_tf.training.checkpoints)."""

import logging
import os
import signal
import time

from bit_tf.training.checkpoints import RunProgress, signals_caught
from bit_tf.training.signals import SIGNALS


def test_sigint_again_while_the_checkpoint_is_written_is_reported_and_changes_nothing(caplog):
    run = RunProgress(None, {"settings": {}, "step": 0, "finished": False}, 8, 1, 0.003)
    before = {number: signal.getsignal(number) for number in SIGNALS}
    with caplog.at_level(logging.WARNING), signals_caught(run, enabled=True):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here
    assert run.signal_number == signal.SIGINT
    messages = [record.getMessage() for record in caplog.records]
    assert sum("SIGINT received: writing a checkpoint" in text for text in messages) == 1
    again = "SIGINT received again: still writing the checkpoint"
    assert sum(again in text for text in messages) == 2, messages
    assert {number: signal.getsignal(number) for number in SIGNALS} == before
