"""Training a run with `model.fit`, one Keras epoch per validation, from any step to its end.

A run of `total_steps` optimizer steps validated every `validation_every` steps is split into
`fit` calls of equal epochs (`segments`); a resumed run starts in the middle of an epoch and
ends at the same step count as an uninterrupted one. `fit_segments` runs them with the run's
stop signals caught (`bit_tf.training.signals`), where the run has a checkpoint folder.

Example:
    >>> segments(start=0, total=25, every=10)
    [(0, 2, 10), (2, 1, 5)]
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import keras

from bit_tf.training.checkpoints import RunProgress, signals_caught
from bit_tf.training.inputs import Inputs

__all__ = [
    "VALIDATIONS_PER_RUN",
    "end_of_data_unreported",
    "fit_segments",
    "segments",
    "validation_interval",
]

#: How many validations a run makes by default.
VALIDATIONS_PER_RUN = 10


def validation_interval(total_steps: int, validation_every: int | None) -> int:
    """The optimizer steps between validations: `validation_every`, else a tenth of the run.

    Example:
        >>> validation_interval(500, None), validation_interval(500, 20)
        (50, 20)
    """
    return int(validation_every or max(1, math.ceil(total_steps / VALIDATIONS_PER_RUN)))


def segments(start: int, total: int, every: int) -> list[tuple[int, int, int]]:
    """Consecutive (first_epoch, epochs, steps_per_epoch) runs covering steps start..total.

    Example:
        >>> segments(15, 25, 10)
        [(1, 1, 5), (2, 1, 5)]
    """
    epochs = []
    step = start
    while step < total:
        epoch = step // every
        end = min((epoch + 1) * every, total)
        epochs.append((epoch, end - step))
        step = end
    merged = []
    for epoch, length in epochs:
        if merged and merged[-1][2] == length and merged[-1][0] + merged[-1][1] == epoch:
            first, count, _ = merged[-1]
            merged[-1] = (first, count + 1, length)
        else:
            merged.append((epoch, 1, length))
    return merged


def fit_segments(
    model: keras.Model,
    inputs: Inputs,
    run: RunProgress,
    validation_every: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Runs `model.fit` from the run's step to its end, one Keras epoch per validation, with
    signals caught where there are checkpoints; returns the History of all fit calls.

    Example:
        >>> history = fit_segments(model, inputs, run, 50, [Checkpointer(run)])
    """
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch, history.history = [], {}
    step = run.progress["step"]
    with signals_caught(run, enabled=run.checkpoint_dir is not None):
        for first_epoch, epochs, length in segments(step, run.total_steps, validation_every):
            # Each segment reads on from the micro-batch where the run is (a resumed run too).
            with end_of_data_unreported():
                segment = model.fit(
                    inputs.train_stream(step * run.accumulation),
                    validation_data=inputs.validation_batches,
                    initial_epoch=first_epoch,
                    epochs=first_epoch + epochs,
                    steps_per_epoch=length * run.accumulation,
                    callbacks=callbacks,
                    verbose=verbose,
                    shuffle=False,
                )
            step += epochs * length
            history.epoch.extend(segment.epoch)
            for key, values in segment.history.items():
                history.history.setdefault(key, []).extend(values)
    return history


@contextlib.contextmanager
def end_of_data_unreported() -> Iterator[None]:
    """Keras' `fit` and `evaluate` inside the block do not warn "Your input ran out of data;
    interrupting training" when an evaluation set whose number of batches Keras cannot know (a
    file-backed pipeline) comes to its end, which is how every evaluation ends. (The train
    streams of `fit_segments` repeat for ever: the warning can only be the evaluation's.)

    Example:
        >>> with end_of_data_unreported():
        ...     model.evaluate(bit_tf.data.eval_pipeline(validation, 64, 128))
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Your input ran out of data", UserWarning)
        yield
