"""How long to distil: the "patient" schedules of Beyer et al. (2022), by training-set size.

Distillation keeps improving for far longer than training from labels, because the teacher
gives a fresh target for every new augmented view. The authors' configurations
(big_vision `configs/proj/distill/`) set the number of epochs by data set and by a
fast/medium/long variant; `patient_steps` reads that table for a training set of a given size
and turns the epochs into optimizer steps. `warmup_steps` is their linear warm-up (1,500
steps, 5,000 on ImageNet), at most a quarter of the run.

Example:
    >>> from bit_tf.distill.schedule import patient_steps, warmup_steps
    >>> patient_steps(dataset_size=1_020, batch_size=512, patience="fast")  # Flowers-102
    19922
    >>> warmup_steps(19922, dataset_size=1_020)
    1500
"""

from __future__ import annotations

import math

__all__ = ["PATIENCE", "SCHEDULES", "patient_steps", "warmup_steps"]

#: The schedule lengths, shortest first.
PATIENCE = ("fast", "medium", "long")

#: (up to this many training examples, epochs of the fast/medium/long variant, warm-up steps),
#: from big_vision's configs/proj/distill: bigsweep_flowers_pet.py (Flowers-102, 1,020
#: images; Oxford-IIIT Pet, 3,312), bigsweep_food_sun.py (Food-101 and SUN397, ~70k) and
#: bit_i1k.py (ImageNet, 1.28M: 1,200 epochs, its "good middle-ground", as medium; 9,600, the
#: paper's longest, as long).
SCHEDULES = (
    (2_000, (10_000, 100_000, 1_000_000), 1_500),
    (20_000, (1_000, 3_000, 30_000), 1_500),
    (500_000, (100, 1_000, 3_000), 1_500),
    (math.inf, (300, 1_200, 9_600), 5_000),
)


def _row(dataset_size: int) -> tuple:
    if not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive integer, got {dataset_size!r}.")
    return next(row for row in SCHEDULES if dataset_size <= row[0])


def patient_steps(dataset_size: int, batch_size: int, patience: str = "medium") -> int:
    """The optimizer steps of the paper's `patience` schedule for `dataset_size` examples.

    Raises:
        ValueError: `patience` is not one of "fast", "medium", "long", or a size is not a
            positive integer.

    Example:
        >>> patient_steps(3_312, 512, "medium")  # Oxford-IIIT Pet: 3,000 epochs
        19407
    """
    if patience not in PATIENCE:
        raise ValueError(f"patience must be one of {', '.join(PATIENCE)}; got {patience!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    epochs = _row(dataset_size)[1][PATIENCE.index(patience)]
    return math.ceil(epochs * dataset_size / batch_size)


def warmup_steps(total_steps: int, dataset_size: int | None = None) -> int:
    """The paper's warm-up for a run of `total_steps` (at most a quarter of it).

    Example:
        >>> warmup_steps(1_000)
        250
    """
    paper = _row(dataset_size)[2] if dataset_size else SCHEDULES[0][2]
    return min(paper, total_steps // 4)
