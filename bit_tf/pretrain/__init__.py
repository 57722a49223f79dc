"""Distributed upstream pre-training: `pretrain` (the recipe) and its loop, workers, schedule,
sources, records, augmentation, labels, bad-image handling and progress.

Example:
    >>> from bit_tf import pretrain
    >>> config = pretrain.PretrainConfig(model="BiT-S-R50x1", dataset="/data/train-*",
    ...                                  checkpoint_dir="/ckpt", num_classes=1000)
    >>> result = pretrain.pretrain(config)
"""

from __future__ import annotations

from bit_tf.pretrain.recipe import *  # noqa: F403 (the names of its __all__)
from bit_tf.pretrain.recipe import __all__ as __all__
