"""Fine-tuning: the BiT-HyperRule (`hyperrule`) and `finetune` (the recipe).

`bit_tf.finetune(...)` calls `bit_tf.finetune.finetune(...)`. The recipe's names are loaded on
first use: `bit_tf/__init__.py` imports `bit_tf.finetune.hyperrule` (its schedule is registered
for saved `.keras` files) without TensorFlow's input pipelines.

Example:
    >>> import bit_tf
    >>> model, history = bit_tf.finetune("BiT-M-R50x1", "/data/flowers/train", steps=500)
    >>> config = bit_tf.finetune.FinetuneConfig(batch_size=128)
"""

from __future__ import annotations

import importlib

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "PROGRESS_FILE",
    "VALIDATIONS_PER_RUN",
    "FinetuneConfig",
    "RunSettingsError",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "accumulation_and_micro_batch",
    "finetune",
    "resolve_resolution",
]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("bit_tf.finetune.recipe"), name)
    raise AttributeError(f"module 'bit_tf.finetune' has no attribute {name!r}")
