"""The upstream (pre-training) learning-rate schedule of BiT-S, BiT-M and BiT-L.

The recipe of the seed lecture and the BiT paper:

- base learning rate 0.03 x global batch / 256 (0.48 at the default batch of 4096);
- linear warm-up from 0 over the first 5000 steps;
- decay by 10x after epochs 30, 60 and 80 of 90 (BiT-S, BiT-M), or after epochs 23, 30 and 37
  of 40 (BiT-L), as the seed's table has it; the paper's text decays BiT-L after epochs 10, 23,
  30 and 37, which `decay_epochs="paper"` selects;
- epochs become steps through the dataset size and the global batch size.

`UpstreamSchedule` is the rule as a serializable `keras.optimizers.schedules.LearningRateSchedule`;
`upstream_schedule` builds it from the model size, the dataset size and the batch size.

Example:
    >>> from bit_tf.pretrain.schedule import upstream_schedule
    >>> schedule = upstream_schedule("S", dataset_size=1_281_167, global_batch_size=4096)
    >>> schedule.total_steps, schedule.boundaries
    (28080, (9360, 18720, 24960))
    >>> optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

#: The base learning rate at `BASE_BATCH_SIZE`; other global batch sizes scale it linearly.
BASE_LR = 0.03
BASE_BATCH_SIZE = 256
WARMUP_STEPS = 5000
DECAY_FACTOR = 0.1
DEFAULT_GLOBAL_BATCH_SIZE = 4096
#: Epochs and the epochs after which the rate drops 10x, per upstream model size.
RECIPES = {
    "S": {"epochs": 90, "decay_epochs": (30, 60, 80)},
    "M": {"epochs": 90, "decay_epochs": (30, 60, 80)},
    "L": {"epochs": 40, "decay_epochs": (23, 30, 37)},
}
#: The decay epochs as the BiT paper's text states them; for BiT-L they differ from the seed's
#: table (`RECIPES`), which stays the default.
PAPER_DECAY_EPOCHS = {"S": (30, 60, 80), "M": (30, 60, 80), "L": (10, 23, 30, 37)}
#: The named choices of `upstream_schedule(decay_epochs=...)`.
DECAY_EPOCH_SOURCES = ("seed", "paper")


def base_learning_rate(global_batch_size: int) -> float:
    """0.03 x global batch / 256.

    Example:
        >>> base_learning_rate(4096)
        0.48
    """
    _check_positive("global_batch_size", global_batch_size)
    return BASE_LR * global_batch_size / BASE_BATCH_SIZE


def steps_per_epoch(dataset_size: int, global_batch_size: int) -> int:
    """Steps in one epoch: dataset size // global batch size (at least 1).

    Example:
        >>> steps_per_epoch(1_281_167, 4096)
        312
    """
    _check_positive("dataset_size", dataset_size)
    _check_positive("global_batch_size", global_batch_size)
    return max(1, dataset_size // global_batch_size)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _recipe(model_size: str) -> dict:
    size = model_size.upper() if isinstance(model_size, str) else model_size
    if size not in RECIPES:
        raise ValueError(
            f"Unknown upstream model size {model_size!r}: choose 'S' or 'M' (90 epochs, decays "
            "after 30/60/80) or 'L' (40 epochs, decays after 23/30/37)."
        )
    return RECIPES[size]


def _decay_epochs(model_size: str, recipe: dict, decay_epochs) -> tuple[int, ...]:
    if isinstance(decay_epochs, str):
        if decay_epochs not in DECAY_EPOCH_SOURCES:
            raise ValueError(
                f"decay_epochs must be one of {DECAY_EPOCH_SOURCES} or a list of epochs, got "
                f"{decay_epochs!r}."
            )
        if decay_epochs == "seed":
            return tuple(recipe["decay_epochs"])
        return PAPER_DECAY_EPOCHS[model_size.upper()]
    epochs = tuple(int(epoch) for epoch in decay_epochs)
    if any(not 0 < epoch < recipe["epochs"] for epoch in epochs) or list(epochs) != sorted(epochs):
        raise ValueError(
            f"decay_epochs must be increasing epochs between 0 and the recipe's "
            f"{recipe['epochs']}, got {list(epochs)!r}."
        )
    return epochs


@keras.saving.register_keras_serializable(package="bit_tf")
class UpstreamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base_learning_rate`, then a 10x drop after each boundary step.

    The rate at step `s` is `base * s / warmup_steps` while `s < warmup_steps`, then
    `base * 0.1 ** (number of boundaries <= s)`. It stays at its last value after
    `total_steps` (which is kept for reference and for the training loop).

    Args:
        base_learning_rate: the peak rate (0.03 x global batch / 256 in BiT).
        boundaries: increasing steps after which the rate drops by `decay_factor`.
        warmup_steps: steps of linear warm-up from 0; 0 for none.
        total_steps: the planned length of training.
        decay_factor: the multiplier at each boundary (0.1).

    Example:
        >>> schedule = UpstreamSchedule(0.48, boundaries=(300, 600, 800), warmup_steps=50,
        ...                             total_steps=900)
        >>> [round(float(schedule(step)), 6) for step in (25, 300, 899)]
        [0.24, 0.048, 0.00048]
    """

    def __init__(
        self,
        base_learning_rate: float,
        boundaries: Sequence[int],
        warmup_steps: int = WARMUP_STEPS,
        total_steps: int | None = None,
        decay_factor: float = DECAY_FACTOR,
    ):
        super().__init__()
        boundaries = tuple(int(step) for step in boundaries)
        if any(
            later < earlier for earlier, later in zip(boundaries[:-1], boundaries[1:], strict=True)
        ):
            raise ValueError(f"boundaries must be increasing steps, got {boundaries!r}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}.")
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate!r}.")
        self.base_learning_rate = float(base_learning_rate)
        self.boundaries = boundaries
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rate = keras.ops.convert_to_tensor(self.base_learning_rate, "float32")
        for boundary in self.boundaries:
            rate = keras.ops.where(step >= boundary, rate * self.decay_factor, rate)
        if self.warmup_steps > 0:
            warmup = self.base_learning_rate * step / self.warmup_steps
            rate = keras.ops.where(step < self.warmup_steps, warmup, rate)
        return rate

    def get_config(self) -> dict:
        return {
            "base_learning_rate": self.base_learning_rate,
            "boundaries": list(self.boundaries),
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay_factor": self.decay_factor,
        }


def upstream_schedule(
    model_size: str,
    dataset_size: int,
    global_batch_size: int = DEFAULT_GLOBAL_BATCH_SIZE,
    *,
    epochs: int | None = None,
    train_steps: int | None = None,
    warmup_steps: int = WARMUP_STEPS,
    decay_epochs: str | Sequence[int] = "seed",
) -> UpstreamSchedule:
    """The BiT upstream schedule for a model size ("S", "M" or "L"), a dataset and a batch.

    The decay epochs keep their place relative to the length of training: with the default
    `epochs` (90 for S/M, 40 for L) they are exactly the paper's; `epochs=` or `train_steps=`
    (which wins) stretch or shrink the whole schedule, e.g. 9 epochs of S decay after 3, 6, 8.

    Args:
        model_size: "S", "M" or "L" (the letter of "BiT-M-R50x1").
        dataset_size: number of training examples (1,281,167 for ILSVRC-2012).
        global_batch_size: the batch summed over all replicas (4096 in BiT).
        epochs: train this many epochs instead of the recipe's.
        train_steps: train exactly this many steps (overrides `epochs`).
        warmup_steps: linear warm-up length in steps (5000 in BiT).
        decay_epochs: "seed" (the seed's table, the default: BiT-L decays after 23, 30, 37),
            "paper" (the paper's text: BiT-L after 10, 23, 30, 37), or increasing epochs of
            the recipe's length (90 for S/M, 40 for L), scaled like the others.

    Example:
        >>> upstream_schedule("L", dataset_size=300_000_000, global_batch_size=4096).boundaries
        (1684566, 2197260, 2709954)
        >>> upstream_schedule("L", 300_000_000, decay_epochs="paper").boundaries
        (732420, 1684566, 2197260, 2709954)
    """
    recipe = dict(_recipe(model_size))
    recipe["decay_epochs"] = _decay_epochs(model_size, recipe, decay_epochs)
    per_epoch = steps_per_epoch(dataset_size, global_batch_size)
    recipe_epochs = recipe["epochs"]
    if train_steps is not None:
        _check_positive("train_steps", train_steps)
        total_steps = train_steps
        scale = train_steps / (recipe_epochs * per_epoch)
        boundaries = [round(epoch * per_epoch * scale) for epoch in recipe["decay_epochs"]]
    else:
        if epochs is None:
            epochs = recipe_epochs
        _check_positive("epochs", epochs)
        total_steps = epochs * per_epoch
        boundaries = [
            round(decay_epoch * epochs / recipe_epochs * per_epoch)
            for decay_epoch in recipe["decay_epochs"]
        ]
    return UpstreamSchedule(
        base_learning_rate(global_batch_size),
        boundaries=boundaries,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )
