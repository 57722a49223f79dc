"""How a run's batch is split: micro-batches per optimizer update, and replicas per micro-batch.

`accumulation_and_micro_batch` turns a config's `batch_size` and `gradient_accumulation_steps`
("auto" or a number) into the micro-batches of one update; `strategy_for` picks the
`tf.distribute` strategy and checks that its replicas split the micro-batch.

Example:
    >>> accumulation, micro_batch = accumulation_and_micro_batch(config, "BiT-S-R26x1", 128)
    >>> strategy = strategy_for(micro_batch, config.strategy)
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from bit_tf.training.checkpoints import read_progress
from bit_tf.training.micro_batch import Architecture, plan_accumulation

__all__ = ["accumulation_and_micro_batch", "strategy_for"]

log = logging.getLogger("bit_tf.finetune")


def accumulation_and_micro_batch(
    config,
    model_or_name: str | keras.Model | None = None,
    resolution: int | None = None,
    policy: keras.DTypePolicy | None = None,
    strategy: tf.distribute.Strategy | None = None,
    available_bytes: int | None = None,
) -> tuple[int, int]:
    """(micro-batches per update, the micro-batch) of a run's config (a
    `bit_tf.training.config.TrainingConfig`), checked against the batch size.

    "auto" plans them with `bit_tf.training.micro_batch.plan_accumulation` for the model's
    architecture (1 for a model of another kind, or without a known `resolution`), the
    `resolution`, the dtype `policy` and the `strategy`'s replicas, and logs a split in one
    line; a run recorded in the config's `checkpoint_dir` with the same batch size keeps the
    number it was started with. `available_bytes`: the memory to plan against (None: what is
    available now).

    Raises:
        ValueError: a number that is not a positive divisor of the batch size.

    Example:
        >>> accumulation_and_micro_batch(FinetuneConfig(batch_size=64), "BiT-S-R26x1", 128)
        (1, 64)
    """
    batch_size = config.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    accumulation = config.gradient_accumulation_steps
    if accumulation is None or accumulation == "auto":
        accumulation = _recorded_accumulation(config) or _planned_accumulation(
            batch_size, model_or_name, resolution, policy, strategy, available_bytes
        )
    if isinstance(accumulation, bool) or not isinstance(accumulation, int | float):
        raise ValueError(
            f"gradient_accumulation_steps must be 'auto' or a positive divisor of batch_size="
            f"{batch_size}, got {config.gradient_accumulation_steps!r}."
        )
    accumulation = int(accumulation)
    if accumulation < 1 or batch_size % accumulation:
        raise ValueError(
            f"gradient_accumulation_steps={config.gradient_accumulation_steps!r} must be a "
            f"positive divisor of batch_size={batch_size}."
        )
    return accumulation, batch_size // accumulation


def _recorded_accumulation(config) -> int | None:
    """The accumulation of the run recorded in `config.checkpoint_dir` with the same batch
    size, so that a resumed run is the run it was (None: no such run)."""
    if not config.checkpoint_dir or config.overwrite:
        return None
    try:
        progress = read_progress(config.checkpoint_dir)
        recorded = progress["settings"]
        if recorded["batch_size"] == config.batch_size:
            return int(recorded["gradient_accumulation_steps"])
    except Exception:  # no run there, or one the run's own checks will report
        return None
    return None


def _planned_accumulation(
    batch_size, model_or_name, resolution, policy, strategy, available_bytes
) -> int:
    """`bit_tf.training.micro_batch`'s plan for this run; 1 where it cannot estimate."""
    if not resolution or model_or_name is None:
        return 1
    try:
        if isinstance(model_or_name, str):
            architecture = Architecture.from_name(model_or_name)
        else:
            architecture = Architecture.from_model(model_or_name)
    except ValueError:
        architecture = None
    if architecture is None:
        return 1
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        log.info(
            "gradient_accumulation_steps='auto' plans against the host's memory, so it keeps "
            "whole batches on a GPU or TPU; give gradient_accumulation_steps there."
        )
        return 1
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    dtype = policy.compute_dtype if policy is not None else "float32"
    plan = plan_accumulation(architecture, batch_size, resolution, dtype, replicas, available_bytes)
    if plan.accumulation > 1:
        log.warning(plan.describe(batch_size, resolution))
    return plan.accumulation


def strategy_for(
    micro_batch: int, strategy: tf.distribute.Strategy | None
) -> tf.distribute.Strategy:
    """The strategy given, else the current one; its replicas must split the micro-batch.

    Raises:
        ValueError: the micro-batch does not split over the strategy's replicas.

    Example:
        >>> strategy_for(64, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    """
    strategy = strategy or tf.distribute.get_strategy()
    if micro_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"The micro-batch {micro_batch} (batch_size / gradient_accumulation_steps) must be "
            f"divisible by the {strategy.num_replicas_in_sync} replicas of the strategy."
        )
    return strategy
