"""The distillation recipes of Beyer et al. (2022) as data: one row per data set and length.

Every row is a setting of big_vision's released distillation configs
(google-research/big_vision, `big_vision/configs/proj/distill/`), whose docstrings say they hold
"the recommended settings from Fig3/Tab4 of the paper": the peak learning rate, the weight
decay, the temperature, the batch, the resolution (student and teacher alike), the epochs and the
warm-up, with the file and lines each value is read from (`DistillRecipe.source`).

`pick_recipe` chooses the row of a run:

- a data set's name: "flowers", "pet", "food", "sun" or "imagenet";
- "auto" (the default): the row of the TFDS data set the train images come from
  (`oxford_flowers102`, `oxford_iiit_pet`, `food101`, `sun397`, `imagenet2012`), else "size"
  (else, for a `tf.data.Dataset` of unknown size, "legacy");
- "size": by the number of training examples (`SIZE_RULE`): up to 2,000 Flowers' row (1,020
  images), up to 20,000 Pet's (3,312), up to 500,000 Food's (68,175; SUN's row differs from
  Food's only in the weight decay and temperature of the medium and long runs), above that
  ImageNet's;
- "legacy": the single setting bit-tf used before these rows (lr 0.003, weight decay 3e-4,
  temperature 1, batch 512, the HyperRule's crop, `bit_tf.distill.schedule`'s lengths).

Example:
    >>> from bit_tf.distill.recipes import pick_recipe, recipe_steps
    >>> recipe = pick_recipe("auto", "fast", "oxford_iiit_pet:train[:90%]", 3_312)
    >>> recipe.base_lr, recipe.weight_decay, recipe.temperature, recipe.crop
    (0.01, 0.001, 5.0, 128)
    >>> recipe_steps(recipe, 3_312)
    6469
"""

from __future__ import annotations

import dataclasses
import math

from bit_tf.distill.schedule import PATIENCE, SCHEDULES, patient_steps, warmup_steps

__all__ = [
    "DATASET_RECIPES",
    "RECIPES",
    "RECIPE_CHOICES",
    "SIZE_RULE",
    "TFDS_RECIPES",
    "VARIANTS",
    "DistillRecipe",
    "pick_recipe",
    "recipe_steps",
    "recipe_warmup",
    "with_recipe",
]

_FLOWERS_PET = "big_vision configs/proj/distill/bigsweep_flowers_pet.py"
_FOOD_SUN = "big_vision configs/proj/distill/bigsweep_food_sun.py"
_IMAGENET = "big_vision configs/proj/distill/bit_i1k.py"
# Lines of the epochs, temperature, lr, wd and warm-up of each data set's rows.
_FLOWERS = f"{_FLOWERS_PET} L65, L95, L105, L109, L112"
_PET = f"{_FLOWERS_PET} L66, L96, L106, L110, L112"
_FOOD = f"{_FOOD_SUN} L62, L90, L100, L104, L107"
_SUN = f"{_FOOD_SUN} L62, L91, L101, L105, L107"


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """One row: the settings of a distillation run on `dataset` for the `patience` length.

    `crop` is the square size of student and teacher (None: the HyperRule's for the images,
    "legacy" only); `source` the files and lines the values are read from.

    Example:
        >>> RECIPES["flowers", "fast"].epochs
        10000
    """

    dataset: str
    patience: str
    epochs: int | None
    base_lr: float
    weight_decay: float
    temperature: float
    batch_size: int
    crop: int | None
    warmup_steps: int | None
    source: str

    @property
    def name(self) -> str:
        """ "<dataset>/<patience>", as a run records it."""
        return f"{self.dataset}/{self.patience}"


def _small(dataset, patience, epochs, lr, wd, temperature, source):
    # Flowers, Pet, Food, SUN: batch 512 (flowers_pet L58, food_sun L56), student and teacher at
    # 128 px (inception_crop(128): flowers_pet L87, food_sun L82), evaluated at
    # resize_small(160)|central_crop(128) (flowers_pet L88, food_sun L83), warm-up 1,500 steps.
    return DistillRecipe(dataset, patience, epochs, lr, wd, temperature, 512, 128, 1500, source)


def _imagenet(patience, epochs, source):
    # One setting at every length: lr 0.03, wd 3e-4 (L87-88), T 1 (L80), batch 4096 (L44),
    # 224 px, evaluated at resize_small(256)|central_crop(224) (L70-74), warm-up 5,000 (L89).
    return DistillRecipe("imagenet", patience, epochs, 0.03, 3e-4, 1.0, 4096, 224, 5000, source)


#: The rows: (data set, patience) -> DistillRecipe. Epochs, lr, wd and T of the small data sets
#: are the configs' per-variant dicts (their `variant` fast/medium/long).
RECIPES: dict[tuple[str, str], DistillRecipe] = {
    (row.dataset, row.patience): row
    for row in (
        _small("flowers", "fast", 10_000, 0.003, 3e-4, 10.0, _FLOWERS),
        _small("flowers", "medium", 100_000, 0.001, 1e-4, 1.0, _FLOWERS),
        _small("flowers", "long", 1_000_000, 0.0003, 1e-5, 1.0, _FLOWERS),
        _small("pet", "fast", 1_000, 0.01, 1e-3, 5.0, _PET),
        _small("pet", "medium", 3_000, 0.003, 3e-4, 10.0, _PET),
        _small("pet", "long", 30_000, 0.003, 1e-5, 2.0, _PET),
        _small("food", "fast", 100, 0.01, 1e-3, 10.0, _FOOD),
        _small("food", "medium", 1_000, 0.001, 3e-4, 10.0, _FOOD),
        _small("food", "long", 3_000, 0.01, 1e-4, 5.0, _FOOD),
        _small("sun", "fast", 100, 0.01, 1e-3, 10.0, _SUN),
        _small("sun", "medium", 1_000, 0.001, 1e-4, 10.0, _SUN),
        _small("sun", "long", 3_000, 0.01, 3e-5, 10.0, _SUN),
        _imagenet("fast", 300, f"{_IMAGENET} L22-23 (its 300-epoch run), L44, L80, L87-89"),
        _imagenet("medium", 1_200, f"{_IMAGENET} L48 ('a good middle-ground'), L44, L80, L87-89"),
        _imagenet(
            "long",
            9_600,
            f"{_IMAGENET} L44, L80, L87-89; 9,600 epochs: the paper's longest ImageNet run, "
            "in no config (unverified against the paper's text)",
        ),
    )
}  # fmt: skip

#: The data set names of the rows.
DATASET_RECIPES = ("flowers", "pet", "food", "sun", "imagenet")
#: Every value `recipe` takes.
RECIPE_CHOICES = ("auto", *DATASET_RECIPES, "size", "legacy")
#: TFDS names (before any ":" or "/") -> the row's data set.
TFDS_RECIPES = {
    "oxford_flowers102": "flowers",
    "oxford_iiit_pet": "pet",
    "food101": "food",
    "sun397": "sun",
    "imagenet2012": "imagenet",
}
#: recipe="size": (up to this many training examples, the row's data set); bit-tf's rule.
SIZE_RULE = ((2_000, "flowers"), (20_000, "pet"), (500_000, "food"), (math.inf, "imagenet"))


def _by_name(dataset_name: str | None) -> str | None:
    """The row's data set for a TFDS source name such as "oxford_iiit_pet:4.*.*:train"."""
    if not dataset_name:
        return None
    stem = dataset_name.split(":")[0].split("/")[0]
    return TFDS_RECIPES.get(stem)


def _by_size(dataset_size: int | None) -> str:
    if not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(
            "recipe='size' (or 'auto' for a data set that is not one of "
            f"{', '.join(TFDS_RECIPES)}) needs the number of training examples; got "
            f"{dataset_size!r}: give dataset_size= or a recipe by name."
        )
    return next(dataset for limit, dataset in SIZE_RULE if dataset_size <= limit)


def _legacy(patience: str, dataset_size: int | None) -> DistillRecipe:
    """bit-tf's settings before the rows: one setting, lengths and warm-up by size."""
    row = next((row for row in SCHEDULES if dataset_size and dataset_size <= row[0]), None)
    epochs = row[1][PATIENCE.index(patience)] if row else None
    source = "bit-tf before issue 32 (lengths: bit_tf.distill.schedule.SCHEDULES)"
    return DistillRecipe("legacy", patience, epochs, 0.003, 3e-4, 1.0, 512, None, None, source)


def pick_recipe(
    recipe: str, patience: str, dataset_name: str | None, dataset_size: int | None
) -> DistillRecipe:
    """The row for `recipe` (see the module's docstring) and `patience` ("fast", "medium",
    "long"), for a train set named `dataset_name` of `dataset_size` examples.

    Raises:
        ValueError: an unknown recipe or patience, or "size" without a dataset size.

    Example:
        >>> pick_recipe("size", "medium", "flowers/", 1_500).dataset
        'flowers'
    """
    if recipe not in RECIPE_CHOICES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPE_CHOICES)}; got {recipe!r}.")
    if patience not in PATIENCE:
        raise ValueError(f"patience must be one of {', '.join(PATIENCE)}; got {patience!r}.")
    if recipe == "legacy":
        return _legacy(patience, dataset_size)
    if recipe == "auto":
        recipe = _by_name(dataset_name) or "size"
        if recipe == "size" and dataset_size is None:  # a tf.data input of unknown size
            return _legacy(patience, dataset_size)
    if recipe == "size":
        recipe = _by_size(dataset_size)
    return RECIPES[recipe, patience]


def recipe_steps(recipe: DistillRecipe, dataset_size: int, batch_size: int | None = None) -> int:
    """The optimizer steps of `recipe` on `dataset_size` examples: round(epochs * size / batch)
    as big_vision counts them (`u.steps("total", ...)`); "legacy" rounds up as it did.

    Example:
        >>> recipe_steps(RECIPES["pet", "medium"], 3_312)
        19406
    """
    batch_size = batch_size or recipe.batch_size
    if recipe.dataset == "legacy":
        return patient_steps(dataset_size, batch_size, recipe.patience)
    return max(1, round(recipe.epochs * dataset_size / batch_size))


def recipe_warmup(recipe: DistillRecipe, total_steps: int, dataset_size: int | None) -> int:
    """The row's warm-up, at most a quarter of a run (bit-tf's cap, for runs shortened with
    `steps`; the rows' own lengths are all longer than four warm-ups).

    Example:
        >>> recipe_warmup(RECIPES["pet", "fast"], 6_469, 3_312)
        1500
    """
    if recipe.warmup_steps is None:
        return warmup_steps(total_steps, dataset_size)
    return min(recipe.warmup_steps, total_steps // 4)


#: The distillation variants (`bit_tf.distill.variants`), the default first.
VARIANTS = ("function_matching", "consistent", "independent", "fixed_teacher")
#: The `DistillConfig` fields a recipe fills where they are None.
RECIPE_FIELDS = ("base_lr", "weight_decay", "temperature", "batch_size", "crop")


def with_recipe(config, dataset_name: str | None, dataset_size: int | None) -> tuple:
    """(`config` with its None settings filled from its recipe's row, the row): the learning
    rate, weight decay, temperature, batch and crop, then the steps (when the train set's
    size is known) and the warm-up. A setting given keeps its value.

    Example:
        >>> config, recipe = with_recipe(DistillConfig(recipe="pet"), "pets/", 3_312)
        >>> config.temperature, config.steps
        (10.0, 19406)
    """
    recipe = pick_recipe(config.recipe, config.patience, dataset_name, dataset_size)
    filled = {
        name: getattr(recipe, name) for name in RECIPE_FIELDS if getattr(config, name) is None
    }
    config = dataclasses.replace(config, **filled)
    if config.steps is None and dataset_size:
        config = dataclasses.replace(
            config, steps=recipe_steps(recipe, dataset_size, config.batch_size)
        )
    if config.warmup_steps is None and config.steps is not None:
        config = dataclasses.replace(
            config, warmup_steps=recipe_warmup(recipe, int(config.steps), dataset_size)
        )
    return config, recipe
