"""hyperrule="authors": the authors' released bit_hyperrule.py (resolution, decay boundaries,
unscaled learning rate) as one choice next to the lecture's default, in finetune's runs."""

import json

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.finetune.hyperrule import HyperRuleSchedule
from bit_tf.finetune.hyperrule_choice import rule_batch_size, rule_boundaries, rule_resolution
from bit_tf.finetune.recipe import finetune, resolve_resolution


def authors_get_lr(step, dataset_size, base_lr=0.003):
    """google-research/big_transfer bit_hyperrule.py get_schedule and get_lr (L40-63)."""
    if dataset_size < 20_000:
        supports = [100, 200, 300, 400, 500]
    elif dataset_size < 500_000:
        supports = [500, 3000, 6000, 9000, 10_000]
    else:
        supports = [500, 6000, 12_000, 18_000, 20_000]
    if step < supports[0]:
        return base_lr * step / supports[0]
    if step >= supports[-1]:
        return None
    for boundary in supports[1:]:
        if boundary < step:
            base_lr /= 10
    return base_lr


@pytest.mark.parametrize("dataset_size, total", [(1_000, 500), (50_000, 10_000), (10**6, 20_000)])
def test_the_authors_schedule_is_their_get_lr_at_every_step_at_any_batch(dataset_size, total):
    boundaries = rule_boundaries("authors", dataset_size, total, 100 if total == 500 else 500)
    schedule = HyperRuleSchedule(batch_size=rule_batch_size("authors", 128), boundaries=boundaries)
    steps = np.arange(total)
    ours = keras.ops.convert_to_numpy(schedule(steps))
    theirs = np.array([authors_get_lr(int(step), dataset_size) for step in steps])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-12)
    # The lecture's: decays at 30/60/90%, and the rate scaled to batch 128.
    lecture = HyperRuleSchedule(
        batch_size=rule_batch_size("lecture", 128),
        boundaries=rule_boundaries("lecture", dataset_size, 500, 100),
    )
    assert float(lecture(149)) == pytest.approx(0.003 * 128 / 512)
    assert float(lecture(150)) == pytest.approx(0.003 * 128 / 512 / 10)


def test_the_authors_resolution_is_512_480_for_every_model_on_larger_images():
    assert rule_resolution("authors", (224, 224), "BiT-M-R50x1") == (512, 480)
    assert rule_resolution("authors", (32, 32), "BiT-M-R152x4") == (160, 128)
    assert rule_resolution("lecture", (224, 224), "BiT-M-R50x1") == (448, 384)
    source = bit_tf.data.from_arrays(np.zeros((4, 100, 100, 3), np.uint8), np.arange(4) % 2)
    assert resolve_resolution(source, "BiT-M-R50x1", None, None, "authors") == (512, 480)
    with pytest.raises(ValueError, match="hyperrule must be one of lecture, authors"):
        rule_resolution("paper", (224, 224), None)


def test_a_run_with_the_authors_rule_records_it_and_keeps_the_rate_unscaled(tmp_path):
    train, validation = bit_tf.data.load_digits()
    train, validation = train.subset(range(64)), validation.subset(range(32))
    inputs = keras.Input((None, None, 3))  # a small backbone ending in a feature vector
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    backbone = keras.Model(inputs, features)
    model, _ = finetune(
        backbone, train, validation, hyperrule="authors", eval_resize="short_side_crop",
        batch_size=8, steps=10, resize=18, crop=16, validation_every=10,
        checkpoint_dir=str(tmp_path),
        jit_compile=False, verbose=0, seed=0,
    )  # fmt: skip
    settings = json.loads((tmp_path / "progress.json").read_text())["settings"]
    assert settings["hyperrule"] == "authors" and settings["eval_resize"] == "short_side_crop"
    # 200/300/400 of 500, scaled to 10 steps, each one step later (get_lr's `s < step`).
    assert settings["boundaries"] == [2, 5, 7, 9, 10]
    schedule = model.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["batch_size"] == 512  # 0.003 unscaled at batch 8, not 0.003 * 8 / 512
    with pytest.raises(ValueError, match="eval_resize must be one of resize, short_side_crop"):
        finetune(backbone, train, eval_resize="center")
