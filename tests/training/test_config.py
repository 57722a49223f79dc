"""bit_tf.training.config: fine-tuning and distillation extend one TrainingConfig, and keep every
field they had, with its default (so `dataclasses.asdict` of a config, and the run settings
made from it, are what they were)."""

import dataclasses

import pytest

from bit_tf.distill.recipe import DistillConfig
from bit_tf.finetune.recipe import FinetuneConfig
from bit_tf.training.config import TrainingConfig, merged_config

#: The fields and defaults of both configs before they shared TrainingConfig (commit eac3099;
#: distillation's recipe-chosen defaults as issue 32 made them).
FINETUNE_BEFORE = {
    "weights": None,
    "batch_size": 512,
    "steps": None,
    "base_lr": 0.003,
    "mixup_alpha": None,
    "gradient_accumulation_steps": "auto",
    "strategy": None,
    "callbacks": None,
    "resize": None,
    "crop": None,
    "warmup_steps": None,
    "validation_every": None,
    "dataset_size": None,
    "checkpoint_dir": None,
    "logdir": None,
    "seed": None,
    "dtype": None,
    "jit_compile": "auto",
    "verbose": "auto",
    "overwrite": False,
    "random_flip": True,
    "random_crop": True,
    "cache": "auto",
}
DISTILL_BEFORE = {
    "student_weights": None,
    "dtype": None,
    "temperature": None,
    "batch_size": None,
    "gradient_accumulation_steps": "auto",
    "crop": None,
    "mixup_alpha": 1.0,
    "min_crop_area": 0.05,
    "random_flip": True,
    "dataset_size": None,
    "seed": None,
    "cache": "auto",
    "steps": None,
    "patience": "medium",
    "base_lr": None,
    "weight_decay": None,
    "warmup_steps": None,
    "clip_norm": 1.0,
    "validation_every": None,
    "strategy": None,
    "checkpoint_dir": None,
    "logdir": None,
    "callbacks": None,
    "jit_compile": "auto",
    "verbose": "auto",
    "overwrite": False,
}


@pytest.mark.parametrize(
    "config_class, before", [(FinetuneConfig, FINETUNE_BEFORE), (DistillConfig, DISTILL_BEFORE)]
)
def test_each_config_extends_training_config_and_keeps_its_fields_and_defaults(
    config_class, before
):
    assert issubclass(config_class, TrainingConfig)
    now = dataclasses.asdict(config_class())
    assert {name: now[name] for name in before} == before


def test_the_shared_fields_are_those_both_configs_had():
    shared = {field.name for field in dataclasses.fields(TrainingConfig)}
    # MixUp's default means another thing in each recipe (the HyperRule's, or Beta(1, 1)).
    assert shared == (FINETUNE_BEFORE.keys() & DISTILL_BEFORE.keys()) - {"mixup_alpha"}
    assert len(shared) == 19


def test_merged_config_replaces_fields_and_names_what_is_wrong():
    config = merged_config(DistillConfig, DistillConfig(steps=5), {"seed": 3}, "distill")
    assert (config.steps, config.seed) == (5, 3)
    with pytest.raises(TypeError, match=r"finetune\(\) got an unexpected keyword .*'patience'"):
        merged_config(FinetuneConfig, None, {"patience": "fast"}, "finetune")
    with pytest.raises(TypeError, match=r"config must be a bit_tf.finetune.FinetuneConfig"):
        merged_config(FinetuneConfig, DistillConfig(), {}, "finetune")
