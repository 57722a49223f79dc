"""One training run, as fine-tuning and distillation both make it: resume or build, then fit.

A recipe works out its run's settings (what identifies it), its length and its batch split,
then hands them to a `TrainingRun`: `resume_or_build` resumes the run with the same settings
found in the config's `checkpoint_dir` (refusing one with other settings, see
`bit_tf.training.checkpoints.find_resumable`) or builds a new model, and `fit` trains it to the
end with the run's checkpointer, the caller's callbacks and TensorBoard, one Keras epoch per
validation (`bit_tf.training.segments`).

Example:
    >>> run = TrainingRun(config, settings, total_steps=500, validation_every=50,
    ...                   accumulation=1)
    >>> model = run.resume_or_build(strategy, build=lambda: new_model(config))
    >>> history = run.fit(model, inputs)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import tensorflow as tf

from bit_tf.training.callbacks import run_callbacks
from bit_tf.training.checkpoints import (
    Checkpointer,
    RunProgress,
    find_resumable,
    load_resumable,
)
from bit_tf.training.config import TrainingConfig
from bit_tf.training.inputs import Inputs
from bit_tf.training.segments import fit_segments

__all__ = ["TrainingRun"]


@dataclasses.dataclass
class TrainingRun:
    """A run's settings, length and batch split, and its progress once resumed or built.

    Attributes:
        config: the recipe's config (a `TrainingConfig`).
        settings: what identifies the run (recorded in `progress.json`, compared on resume).
        total_steps: the optimizer steps of the whole run.
        validation_every: optimizer steps between validations.
        accumulation: micro-batches per optimizer step.
        progress: the run's `progress.json` contents (set by `resume_or_build`).
        resumed: whether `resume_or_build` resumed a checkpoint.

    Example:
        >>> run = TrainingRun(config, {"model": "BiT-S-R50x1"}, 500, 50, 1)
    """

    config: TrainingConfig
    settings: dict
    total_steps: int
    validation_every: int
    accumulation: int
    progress: dict = dataclasses.field(default_factory=dict)
    resumed: bool = False

    def resume_or_build(
        self,
        strategy: tf.distribute.Strategy,
        build: Callable[[], keras.Model],
        restore: Callable[[keras.Model], None] | None = None,
    ) -> keras.Model:
        """The model of the run: resumed from the checkpoint of the same run (then `restore`
        is called with it), else `build()` (after seeding Keras with the config's seed), in
        the strategy's scope.

        Raises:
            RunSettingsError: the checkpoint folder holds a run with other settings.
            DamagedRunFileError: its progress or both checkpoints cannot be read.

        Example:
            >>> model = run.resume_or_build(strategy, lambda: compiled(new_model()))
        """
        found = None
        if self.config.checkpoint_dir is not None:
            found = find_resumable(self.config.checkpoint_dir, self.settings, self.config.overwrite)
        self.progress = {"settings": self.settings, "step": 0, "finished": False}
        self.resumed = found is not None
        with strategy.scope():
            if found is not None:
                model, self.progress = load_resumable(*found, self.accumulation)
                if restore is not None:
                    restore(model)
                return model
            if self.config.seed is not None:  # the same initial weights for a model name
                keras.utils.set_random_seed(self.config.seed)
            return build()

    def fit(self, model: keras.Model, inputs: Inputs) -> keras.callbacks.History:
        """Trains `model` from the run's step to its end; the History of all fit calls.

        Raises:
            TrainingDivergedError: the loss became NaN or infinite.
            TrainingInterruptedError: SIGTERM or SIGINT arrived (with a checkpoint folder).

        Example:
            >>> history = run.fit(model, inputs)
        """
        config = self.config
        progress = RunProgress(
            config.checkpoint_dir,
            self.progress,
            self.total_steps,
            self.accumulation,
            config.base_lr,
        )
        callbacks = run_callbacks(Checkpointer(progress), config.callbacks, config.logdir)
        return fit_segments(
            model, inputs, progress, self.validation_every, callbacks, config.verbose
        )
