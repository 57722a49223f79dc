"""Distillation: `distill` (the recipe), its data, student model, optimizer and schedule.

`bit_tf.distill(...)` calls `bit_tf.distill.distill(...)`.

Example:
    >>> import bit_tf
    >>> student, history = bit_tf.distill(teacher, "BiT-S-R50x1", "/data/flowers/train")
"""

from __future__ import annotations

from bit_tf.distill.recipe import *  # noqa: F403 (the names of its __all__)
from bit_tf.distill.recipe import __all__ as __all__
