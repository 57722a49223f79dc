"""The settings every training recipe shares, and how a recipe's keywords replace them.

`TrainingConfig` holds the 19 fields that fine-tuning (`bit_tf.finetune.FinetuneConfig`) and
distillation (`bit_tf.distill.DistillConfig`) have in common, with the same names and defaults;
each recipe's config extends it with its own. `merged_config` is the one way a recipe turns its
`config` argument and its keyword overrides into the config of the run.

Example:
    >>> from bit_tf.finetune.recipe import FinetuneConfig
    >>> config = merged_config(FinetuneConfig, None, {"steps": 100}, caller="finetune")
    >>> config.steps, isinstance(config, TrainingConfig)
    (100, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import keras
import tensorflow as tf

__all__ = ["TrainingConfig", "merged_config"]


@dataclasses.dataclass
class TrainingConfig:
    """The settings of a training run that every recipe has (a recipe's config extends it).

    Input:
        batch_size: the global batch per optimizer update.
        gradient_accumulation_steps: micro-batches per update (same batch, less memory);
            "auto" splits the batch only where it would not fit the memory available
            (`bit_tf.training.accumulation.accumulation_and_micro_batch`).
        crop: the square size of the training images; None for the recipe's default.
        random_flip: flip the training images at random.
        dataset_size: training examples, only for a `tf.data.Dataset` train input.
        seed: makes the run repeatable (input order, augmentation, initial weights).
        cache: where the encoded images may be cached ("auto", "memory", "none" or a folder).
        dtype: for a model name, the Keras dtype policy to build it with.

    Schedule:
        steps: optimizer updates; None for the recipe's rule.
        base_lr: the recipe's base learning rate.
        warmup_steps: linear warm-up; None for the recipe's rule.
        validation_every: optimizer steps between validations; None for 10 per run.

    Run:
        strategy: a `tf.distribute` strategy; `batch_size` is global.
        checkpoint_dir: where `last.keras`, `best.keras` and `progress.json` go
            (`bit_tf.training.checkpoints`); None for no checkpoints and no signal handling.
        overwrite: start again in a `checkpoint_dir` holding a run with other settings.
        logdir: a TensorBoard log folder; None for none.
        callbacks: more Keras callbacks for `fit`.
        jit_compile: passed to `compile` ("auto": XLA where supported).
        verbose: passed to `fit`.

    Example:
        >>> TrainingConfig(batch_size=64, steps=100).validation_every is None
        True
    """

    batch_size: int = 512
    gradient_accumulation_steps: int | str = "auto"
    crop: int | None = None
    random_flip: bool = True
    dataset_size: int | None = None
    seed: int | None = None
    cache: bool | str = "auto"
    dtype: str | keras.DTypePolicy | None = None
    steps: int | None = None
    base_lr: float = 0.003
    warmup_steps: int | None = None
    validation_every: int | None = None
    strategy: tf.distribute.Strategy | None = None
    checkpoint_dir: str | None = None
    overwrite: bool = False
    logdir: str | None = None
    callbacks: Sequence[keras.callbacks.Callback] | None = None
    jit_compile: bool | str = "auto"
    verbose: int | str = "auto"


Config = TypeVar("Config", bound=TrainingConfig)


def merged_config(
    config_class: type[Config],
    config: Config | None,
    overrides: Mapping[str, Any],
    caller: str,
) -> Config:
    """`config` (or `config_class()`) with the keyword `overrides` in place of its fields.

    Args:
        config_class: the recipe's config class (a `TrainingConfig`).
        config: the config given, or None for the defaults.
        overrides: keywords naming fields of `config_class`.
        caller: the recipe's function name, for the messages ("finetune").

    Raises:
        TypeError: `config` of another class, or a keyword that is not one of its fields.

    Example:
        >>> merged_config(DistillConfig, None, {"patience": "fast"}, "distill").patience
        'fast'
    """
    name = config_class.__name__
    if config is None:
        config = config_class()
    elif not isinstance(config, config_class):
        module = config_class.__module__.rsplit(".", 1)[0]
        raise TypeError(f"config must be a {module}.{name}, got {type(config).__name__}.")
    fields = tuple(field.name for field in dataclasses.fields(config_class))
    for key in overrides:
        if key not in fields:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {key!r}; its settings are "
                f"the fields of {name}: {', '.join(fields)}."
            )
    return dataclasses.replace(config, **overrides)
