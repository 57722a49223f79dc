"""BiT-HyperRule: the fine-tuning recipe of Big Transfer, one rule per function.

The function names are those of the authors' released `bit_hyperrule.py`:

- `get_schedule(dataset_size)`: warm-up and decay boundaries, and the total step count;
- `get_lr(step, dataset_size, base_lr)`: the learning rate at a step (None when done);
- `get_resolution((height, width), model_name)`: the (resize, crop) sizes;
- `get_mixup(dataset_size)`: the MixUp alpha.

The numbers follow the seed lecture where the authors' file differs from
them: decays at 30%, 60% and 90% of the run (the file: at steps 200, 300 and 400 of 500 below
20k examples, which is not 30/60/90%), and 448/384 crops for larger images with 512/480 only for
R152x4 (the file: 512/480 for every model).

`HyperRuleSchedule` is the same rule as a serializable Keras learning-rate schedule, with the
base rate defined at batch 512 and scaled linearly with the batch size.

Example:
    >>> from bit_tf.finetune import hyperrule
    >>> hyperrule.get_schedule(5_000)
    [100, 150, 300, 450, 500]
    >>> hyperrule.get_resolution((32, 32))
    (160, 128)
    >>> schedule = hyperrule.HyperRuleSchedule(dataset_size=5_000, batch_size=128)
    >>> optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

#: The base learning rate of the HyperRule, defined at `BASE_BATCH_SIZE`.
BASE_LR = 0.003
#: The batch size at which `BASE_LR` holds; other batch sizes scale the rate linearly.
BASE_BATCH_SIZE = 512
#: Dataset sizes where the schedule and MixUp change (number of training examples).
SMALL_DATASET = 20_000
LARGE_DATASET = 500_000
#: The learning rate drops by 10x at these fractions of the total steps (the seed's rule).
DECAY_FRACTIONS = (0.3, 0.6, 0.9)
#: Images with an area below this (96 x 96) count as small.
SMALL_IMAGE_AREA = 96 * 96


def _check_dataset_size(dataset_size: int) -> int:
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(
            f"dataset_size must be a positive integer (the number of training examples), "
            f"got {dataset_size!r}."
        )
    return dataset_size


def schedule_from_total(total_steps: int, warmup_steps: int) -> list[int]:
    """The five boundaries `[warmup, decay1, decay2, decay3, total]` for any total length.

    Used by `get_schedule`, and to scale the rule down (e.g. a 300-step CPU run).

    Example:
        >>> schedule_from_total(300, warmup_steps=30)
        [30, 90, 180, 270, 300]
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be an integer between 0 and total_steps={total_steps}, "
            f"got {warmup_steps!r}."
        )
    decays = [max(warmup_steps, round(fraction * total_steps)) for fraction in DECAY_FRACTIONS]
    return [warmup_steps, *decays, total_steps]


def get_schedule(dataset_size: int) -> list[int]:
    """The HyperRule's step boundaries `[warmup, decay1, decay2, decay3, total]`.

    Total: 500 steps below 20k examples, 10k steps from 20k to 500k, 20k steps above.
    Warm-up: linear over 100 steps below 20k examples, 500 steps from 20k on (as in the
    authors' code). The rate drops by 10x at 30%, 60% and 90% of the total.

    Example:
        >>> get_schedule(50_000)
        [500, 3000, 6000, 9000, 10000]
    """
    _check_dataset_size(dataset_size)
    if dataset_size < SMALL_DATASET:
        return schedule_from_total(500, warmup_steps=100)
    if dataset_size < LARGE_DATASET:
        return schedule_from_total(10_000, warmup_steps=500)
    return schedule_from_total(20_000, warmup_steps=500)


def lr_at(step: int, boundaries: Sequence[int], base_lr: float = BASE_LR) -> float | None:
    """The learning rate at `step` for explicit boundaries (see `get_lr`).

    Example:
        >>> lr_at(0, [10, 20, 30, 40, 50], base_lr=1.0), lr_at(25, [10, 20, 30, 40, 50], 1.0)
        (0.0, 0.1)
    """
    warmup, *decays, total = boundaries
    if step < warmup:
        return base_lr * step / warmup
    if step >= total:
        return None
    return base_lr * 0.1 ** sum(step >= boundary for boundary in decays)


def get_lr(step: int, dataset_size: int, base_lr: float = BASE_LR) -> float | None:
    """The learning rate at optimizer step `step` (counting from 0), or None once training is over.

    Linear warm-up from 0 (as the authors' code: step 0 has rate 0), then `base_lr`, divided
    by 10 from each decay boundary on.

    Example:
        >>> get_lr(50, 1_000), get_lr(200, 1_000), get_lr(500, 1_000)
        (0.0015, 0.003, None)
    """
    return lr_at(step, get_schedule(dataset_size), base_lr)


def get_resolution(original_resolution: Sequence[int], model_name: str | None = None) -> tuple:
    """The `(resize, crop)` sizes for images of `original_resolution=(height, width)`.

    Images smaller than 96x96 in area: resize to 160, random crop 128. Larger: 448 and 384;
    for R152x4 on larger images 512 and 480.

    Example:
        >>> get_resolution((224, 224)), get_resolution((224, 224), "BiT-M-R152x4")
        ((448, 384), (512, 480))
    """
    try:
        height, width = (int(size) for size in original_resolution)
    except (TypeError, ValueError):
        raise ValueError(
            f"original_resolution must be (height, width), got {original_resolution!r}."
        ) from None
    if height < 1 or width < 1:
        raise ValueError(f"original_resolution must be positive, got {original_resolution!r}.")
    if height * width < SMALL_IMAGE_AREA:
        return (160, 128)
    # Any spelling: "BiT-M-R152x4", or the Keras model name "bit_m_r152x4".
    if model_name is not None and "r152x4" in model_name.lower():
        return (512, 480)
    return (448, 384)


def get_mixup(dataset_size: int) -> float:
    """The MixUp alpha: 0.0 (no MixUp) below 20k examples, 0.1 from 20k on.

    Example:
        >>> get_mixup(19_999), get_mixup(20_000)
        (0.0, 0.1)
    """
    _check_dataset_size(dataset_size)
    return 0.0 if dataset_size < SMALL_DATASET else 0.1


def scale_lr(base_lr: float, batch_size: int) -> float:
    """The learning rate for `batch_size`, scaled linearly from `base_lr` at batch 512.

    The authors suggest batch 128 with rate 0.001 on small GPUs; the linear rule gives 0.00075.

    Example:
        >>> scale_lr(0.003, 128)
        0.00075
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return base_lr * batch_size / BASE_BATCH_SIZE


@keras.saving.register_keras_serializable(package="bit_tf")
class HyperRuleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The BiT-HyperRule as a Keras learning-rate schedule.

    The rate is `base_lr * batch_size / 512`: `base_lr` (0.003) is defined at batch 512 and
    scaled linearly. Linear warm-up, then drops by 10x at 30%, 60% and 90% of the total; after
    the total the last rate is kept (Keras schedules cannot say "stop").

    Args:
        dataset_size: training examples; picks the boundaries of `get_schedule`.
        batch_size: the global (effective) batch size.
        base_lr: the rate at batch 512.
        boundaries: explicit `[warmup, decay1, decay2, decay3, total]`, overriding
            `dataset_size` (see `schedule_from_total`).
        gradient_accumulation_steps: Keras optimizers call the schedule with the count of
            micro-batches; this divides it back to optimizer updates.

    Example:
        >>> schedule = HyperRuleSchedule(dataset_size=1_000, batch_size=512)
        >>> float(schedule(200))
        0.003
        >>> optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    """

    def __init__(
        self,
        dataset_size: int | None = None,
        batch_size: int = BASE_BATCH_SIZE,
        base_lr: float = BASE_LR,
        boundaries: Sequence[int] | None = None,
        gradient_accumulation_steps: int = 1,
    ):
        if boundaries is None:
            if dataset_size is None:
                raise ValueError("HyperRuleSchedule needs dataset_size or boundaries.")
            boundaries = get_schedule(dataset_size)
        boundaries = [int(boundary) for boundary in boundaries]
        if len(boundaries) != 5 or sorted(boundaries) != boundaries or boundaries[-1] < 1:
            raise ValueError(
                "boundaries must be 5 non-decreasing step counts [warmup, decay1, decay2, "
                f"decay3, total], got {boundaries!r}."
            )
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise ValueError(
                "gradient_accumulation_steps must be a positive integer, "
                f"got {gradient_accumulation_steps!r}."
            )
        self.dataset_size = dataset_size
        self.batch_size = int(batch_size)
        self.base_lr = float(base_lr)
        self.boundaries = boundaries
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.peak_lr = scale_lr(self.base_lr, self.batch_size)

    @property
    def total_steps(self) -> int:
        """The number of optimizer updates of the schedule."""
        return self.boundaries[-1]

    def __call__(self, step):
        step = keras.ops.floor_divide(
            keras.ops.cast(step, "int64"), self.gradient_accumulation_steps
        )
        step = keras.ops.cast(step, "float32")
        warmup, *decays, _ = self.boundaries
        decay_count = sum(keras.ops.cast(step >= boundary, "float32") for boundary in decays)
        rate = self.peak_lr * keras.ops.power(0.1, decay_count)
        if warmup > 0:
            rate = keras.ops.where(step < warmup, self.peak_lr * step / warmup, rate)
        return rate

    def get_config(self) -> dict:
        return {
            "dataset_size": self.dataset_size,
            "batch_size": self.batch_size,
            "base_lr": self.base_lr,
            "boundaries": list(self.boundaries),
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
