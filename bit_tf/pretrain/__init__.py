"""Distributed upstream pre-training: `pretrain` (the recipe) and its loop, workers, schedule,
sources, records, augmentation, labels, bad-image handling and progress.

Example:
    >>> from bit_tf import pretrain
    >>> config = pretrain.PretrainConfig(model="BiT-S-R50x1", dataset="/data/train-*",
    ...                                  checkpoint_dir="/ckpt", num_classes=1000)
    >>> result = pretrain.pretrain(config)
"""

from __future__ import annotations

from bit_tf.pretrain.recipe import (
    PretrainConfig,
    PretrainResult,
    StrategyError,
    TrainingInterrupted,
    WorkerLost,
    configure_cpu_devices,
    default_steps_per_loop,
    initialise_head_bias,
    make_optimizer,
    make_strategy,
    make_train_loop,
    make_train_step,
    pretrain,
    top1_hits,
    upstream_loss,
)

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "StrategyError",
    "TrainingInterrupted",
    "WorkerLost",
    "configure_cpu_devices",
    "default_steps_per_loop",
    "initialise_head_bias",
    "make_optimizer",
    "make_strategy",
    "make_train_loop",
    "make_train_step",
    "pretrain",
    "top1_hits",
    "upstream_loss",
]
