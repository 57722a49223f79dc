"""The optimizer of distillation as big_vision's `configs/proj/distill/` sets it up.

Adam (beta_1 0.9, beta_2 0.999, epsilon 1e-8), the gradient clipped to global norm 1.0, a
linear warm-up then cosine decay to zero (`WarmupCosineDecay`), and decoupled weight decay on
the kernels only (`KernelDecayAdamW`), of strength `weight_decay * lr(t) / learning_rate`: the
decay follows the schedule's shape but not the learning rate's size, as in big_vision, where
`wd` is added to the Adam update after the learning rate and before the schedule.

Example:
    >>> from bit_tf.distill.optimizer import distillation_optimizer
    >>> optimizer = distillation_optimizer(
    ...     learning_rate=0.003, weight_decay=3e-4, total_steps=10_000, warmup_steps=1_500)
    >>> distiller.compile(optimizer=optimizer)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import keras
from keras import ops

__all__ = ["KernelDecayAdamW", "WarmupCosineDecay", "distillation_optimizer"]

#: The variables `KernelDecayAdamW` does not decay, by name (biases, normalizations' scale and
#: offset): big_vision decays the variables named `.../kernel` only.
NOT_DECAYED = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="bit_tf")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate`, then cosine decay to 0 at `total_steps`.

    Args:
        learning_rate: the rate at the end of the warm-up.
        total_steps: optimizer updates of the whole run; the rate is 0 from there on.
        warmup_steps: updates of the linear warm-up.
        gradient_accumulation_steps: Keras optimizers call the schedule with the count of
            micro-batches; this divides it back to optimizer updates.

    Example:
        >>> schedule = WarmupCosineDecay(0.01, total_steps=100, warmup_steps=10)
        >>> [round(float(schedule(step)), 4) for step in (0, 5, 10, 55, 100)]
        [0.0, 0.005, 0.01, 0.005, 0.0]
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        gradient_accumulation_steps: int = 1,
    ):
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(
                f"warmup_steps={warmup_steps!r} must be between 0 and total_steps="
                f"{total_steps!r}, which must be positive."
            )
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)

    def __call__(self, step):
        step = ops.cast(ops.floor_divide(step, self.gradient_accumulation_steps), "float32")
        warmup = max(self.warmup_steps, 1)
        warming = self.learning_rate * step / warmup
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decaying = self.learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warming, decaying)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


@keras.saving.register_keras_serializable(package="bit_tf")
class KernelDecayAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` that decays no variable named in `not_decayed`.

    Keras' `exclude_from_weight_decay` must be called before the optimizer is built and is not
    saved with it, so a resumed run would decay every variable; here the names are an argument,
    saved in the config, and applied again when a checkpoint is loaded.

    Args:
        *args, **kwargs: those of `keras.optimizers.AdamW`.
        not_decayed: variable names (the last part of the name, e.g. "bias") that get no
            weight decay.

    Example:
        >>> optimizer = KernelDecayAdamW(learning_rate=1e-3, weight_decay=0.1)
    """

    def __init__(self, *args, not_decayed: Sequence[str] = NOT_DECAYED, **kwargs):
        super().__init__(*args, **kwargs)
        self.not_decayed = tuple(not_decayed)
        if self.not_decayed:
            # The last part of the name: "bias" (Keras) or "head/bias:0" (a tf.Variable's).
            patterns = [rf"(^|/){re.escape(name)}(:\d+)?$" for name in self.not_decayed]
            self.exclude_from_weight_decay(var_names=patterns)

    def get_config(self) -> dict:
        return {**super().get_config(), "not_decayed": list(self.not_decayed)}


def distillation_optimizer(
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    clip_norm: float | None = 1.0,
    gradient_accumulation_steps: int = 1,
) -> KernelDecayAdamW:
    """Adam with warm-up and cosine decay, clipping at global norm `clip_norm` and decoupled
    weight decay `weight_decay` (big_vision's `wd`) on kernels.

    Args:
        learning_rate: the peak rate (big_vision's `lr`).
        weight_decay: the decay per step at the peak, relative to the weights (big_vision's
            `wd`); it follows the schedule.
        total_steps, warmup_steps: the schedule, in optimizer updates.
        clip_norm: the global gradient norm to clip to; None for no clipping.
        gradient_accumulation_steps: micro-batches per update (1: none).

    Example:
        >>> optimizer = distillation_optimizer(0.01, 1e-3, total_steps=5_000, warmup_steps=500)
    """
    schedule = WarmupCosineDecay(
        learning_rate, total_steps, warmup_steps, gradient_accumulation_steps
    )
    return KernelDecayAdamW(
        learning_rate=schedule,
        weight_decay=weight_decay / learning_rate if learning_rate > 0 else 0.0,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clip_norm,
        gradient_accumulation_steps=(
            gradient_accumulation_steps if gradient_accumulation_steps > 1 else None
        ),
    )
