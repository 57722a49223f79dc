"""Which BiT-HyperRule a fine-tuning run follows: the lecture's (the default) or the authors'
released code's.

The two differ in three places (docs/fidelity.md lists them side by side):

- resolution: the lecture resizes larger images to 448 and crops 384 (512/480 for R152x4);
  the authors' `bit_hyperrule.get_resolution` (google-research/big_transfer, L15-18) uses
  512/480 for every model. Small images (area below 96 x 96) are 160/128 in both. The authors
  decide by a nominal size per data set name (L21-33); bit-tf measures the train images;
- decays: the lecture divides the rate by 10 at 30%, 60% and 90% of the run; the authors'
  `get_schedule` (L40-46) at steps 200, 300, 400 of 500 below 20k examples (3,000 / 6,000 /
  9,000 of 10k and 6,000 / 12,000 / 18,000 of 20k above), and `get_lr` (L49-63) lowers the
  rate only once the step is past the boundary (`s < step`): from step 201, 301, 401;
- learning rate: bit-tf's lecture rule scales 0.003 linearly with the batch (0.003 at 512);
  the authors' trainers use `--base_lr` (0.003) at any batch (big_transfer `bit_common.py`
  L46-51; `bit_tf2/train.py` L118-123 leaves batch scaling out on purpose).

Example:
    >>> from bit_tf.finetune.hyperrule_choice import rule_boundaries, rule_resolution
    >>> rule_resolution("authors", (224, 224), "BiT-M-R50x1")
    (512, 480)
    >>> rule_boundaries("authors", 5_000, 500, 100)
    [100, 201, 301, 401, 500]
"""

from __future__ import annotations

from collections.abc import Sequence

from bit_tf.finetune import hyperrule

__all__ = [
    "AUTHORS_SCHEDULES",
    "HYPERRULES",
    "authors_resolution",
    "rule_batch_size",
    "rule_boundaries",
    "rule_resolution",
    "rule_schedule",
]

#: The rules, the default first.
HYPERRULES = ("lecture", "authors")
#: The authors' `get_schedule`: (fewer examples than, [warm-up, decay, decay, decay, total]).
AUTHORS_SCHEDULES = (
    (hyperrule.SMALL_DATASET, (100, 200, 300, 400, 500)),
    (hyperrule.LARGE_DATASET, (500, 3_000, 6_000, 9_000, 10_000)),
    (float("inf"), (500, 6_000, 12_000, 18_000, 20_000)),
)


def _check(rule: str) -> None:
    if rule not in HYPERRULES:
        raise ValueError(f"hyperrule must be one of {', '.join(HYPERRULES)}; got {rule!r}.")


def authors_resolution(original_resolution: Sequence[int]) -> tuple[int, int]:
    """The authors' (resize, crop): 160/128 for images below 96 x 96 in area, else 512/480.

    Example:
        >>> authors_resolution((32, 32)), authors_resolution((500, 375))
        ((160, 128), (512, 480))
    """
    small = hyperrule.get_resolution(original_resolution) == (160, 128)
    return (160, 128) if small else (512, 480)


def rule_resolution(rule: str, original_resolution: Sequence[int], model_name: str | None):
    """The (resize, crop) of `rule` for images of `original_resolution`.

    Example:
        >>> rule_resolution("lecture", (224, 224), "BiT-M-R50x1")
        (448, 384)
    """
    _check(rule)
    if rule == "authors":
        return authors_resolution(original_resolution)
    return hyperrule.get_resolution(original_resolution, model_name)


def rule_schedule(rule: str, dataset_size: int) -> list[int]:
    """The nominal `[warm-up, decay1, decay2, decay3, total]` of `rule` for `dataset_size`
    examples (the authors': as their `get_schedule` writes it).

    Example:
        >>> rule_schedule("authors", 1_000), rule_schedule("lecture", 1_000)
        ([100, 200, 300, 400, 500], [100, 150, 300, 450, 500])
    """
    _check(rule)
    if rule == "lecture":
        return hyperrule.get_schedule(dataset_size)
    hyperrule.get_schedule(dataset_size)  # the same check of the size
    return list(next(steps for limit, steps in AUTHORS_SCHEDULES if dataset_size < limit))


def rule_boundaries(
    rule: str, dataset_size: int | None, total_steps: int, warmup_steps: int
) -> list[int]:
    """The boundaries a run of `total_steps` with `warmup_steps` uses, in the
    `step >= boundary` form of `bit_tf.finetune.hyperrule.HyperRuleSchedule`.

    Lecture: decays at 30/60/90% of the run. Authors: their decays scaled to the run
    (unchanged at their own length), each one step later, as `get_lr`'s `s < step` lowers the
    rate only after the boundary.

    Example:
        >>> rule_boundaries("authors", 1_000, 50, 10)
        [10, 21, 31, 41, 50]
    """
    _check(rule)
    if rule == "lecture" or dataset_size is None:
        return hyperrule.schedule_from_total(total_steps, warmup_steps=warmup_steps)
    nominal = rule_schedule(rule, dataset_size)
    decays = [
        min(total_steps, round(step * total_steps / nominal[-1]) + 1) for step in nominal[1:4]
    ]
    return [warmup_steps, *(max(warmup_steps, decay) for decay in decays), total_steps]


def rule_batch_size(rule: str, batch_size: int) -> int:
    """The batch size the learning rate is scaled by (`HyperRuleSchedule.batch_size`):
    the run's for the lecture (linear scaling from 512), 512 for the authors (no scaling).

    Example:
        >>> rule_batch_size("authors", 128), rule_batch_size("lecture", 128)
        (512, 128)
    """
    _check(rule)
    return batch_size if rule == "lecture" else hyperrule.BASE_BATCH_SIZE
