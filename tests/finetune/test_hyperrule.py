"""BiT-HyperRule: schedule, learning rate, resolution and MixUp at the rule's edges."""

import json

import keras
import numpy as np
import pytest

from bit_tf.finetune import hyperrule

SCHEDULES = {
    1: [100, 150, 300, 450, 500],
    19_999: [100, 150, 300, 450, 500],
    20_000: [500, 3000, 6000, 9000, 10_000],
    499_999: [500, 3000, 6000, 9000, 10_000],
    500_000: [500, 6000, 12_000, 18_000, 20_000],
    10**7: [500, 6000, 12_000, 18_000, 20_000],
}


@pytest.mark.parametrize("dataset_size", sorted(SCHEDULES))
def test_schedule_total_warmup_and_decays(dataset_size):
    schedule = hyperrule.get_schedule(dataset_size)
    assert schedule == SCHEDULES[dataset_size]
    warmup, *decays, total = schedule
    assert decays == [round(fraction * total) for fraction in (0.3, 0.6, 0.9)]


@pytest.mark.parametrize("dataset_size", sorted(SCHEDULES))
def test_lr_warms_up_then_drops_tenfold_then_stops(dataset_size):
    warmup, decay1, decay2, decay3, total = SCHEDULES[dataset_size]
    base = 0.003
    assert hyperrule.get_lr(0, dataset_size) == 0.0
    assert hyperrule.get_lr(warmup // 2, dataset_size) == pytest.approx(base / 2, rel=0.02)
    assert hyperrule.get_lr(warmup, dataset_size) == pytest.approx(base)
    assert hyperrule.get_lr(decay1 - 1, dataset_size) == pytest.approx(base)
    assert hyperrule.get_lr(decay1, dataset_size) == pytest.approx(base / 10)
    assert hyperrule.get_lr(decay2, dataset_size) == pytest.approx(base / 100)
    assert hyperrule.get_lr(decay3, dataset_size) == pytest.approx(base / 1000)
    assert hyperrule.get_lr(total - 1, dataset_size) == pytest.approx(base / 1000)
    assert hyperrule.get_lr(total, dataset_size) is None
    assert hyperrule.get_lr(warmup, dataset_size, base_lr=0.01) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "size, model_name, expected",
    [
        ((32, 32), None, (160, 128)),
        ((95, 95), None, (160, 128)),
        ((96, 96), None, (448, 384)),
        ((224, 224), None, (448, 384)),
        ((224, 224), "BiT-M-R152x4", (512, 480)),
        ((32, 32), "BiT-M-R152x4", (160, 128)),
        ((224, 224), "BiT-M-R50x1", (448, 384)),
        ((224, 224), "bit_m_r152x4", (512, 480)),  # a Keras model's name, as finetune sees it
        ((224, 224), "bit_s_r152x2", (448, 384)),
    ],
)
def test_resolution(size, model_name, expected):
    assert hyperrule.get_resolution(size, model_name) == expected


@pytest.mark.parametrize("dataset_size", sorted(SCHEDULES))
def test_mixup(dataset_size):
    assert hyperrule.get_mixup(dataset_size) == (0.0 if dataset_size < 20_000 else 0.1)


@pytest.mark.parametrize("bad", [0, -5, 2.5, None, "1000"])
def test_bad_dataset_size_is_refused_with_the_value(bad):
    with pytest.raises(ValueError, match="dataset_size"):
        hyperrule.get_schedule(bad)


@pytest.mark.parametrize("dataset_size", [1, 20_000, 10**7])
def test_keras_schedule_matches_get_lr_and_scales_with_batch(dataset_size):
    for batch_size in (512, 128):
        schedule = hyperrule.HyperRuleSchedule(dataset_size=dataset_size, batch_size=batch_size)
        steps = list(range(0, SCHEDULES[dataset_size][-1], 37))
        got = np.array([float(schedule(step)) for step in steps])
        expected = np.array([hyperrule.get_lr(step, dataset_size) for step in steps])
        np.testing.assert_allclose(got, expected * batch_size / 512, rtol=1e-5, atol=1e-12)


def test_keras_schedule_serializes_and_counts_updates_under_accumulation():
    schedule = hyperrule.HyperRuleSchedule(
        boundaries=[10, 30, 60, 90, 100],
        batch_size=256,
        base_lr=0.01,
        gradient_accumulation_steps=4,
    )
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, hyperrule.HyperRuleSchedule)
    for micro_step in (0, 7, 40, 119, 120, 250):
        update = micro_step // 4
        expected = hyperrule.lr_at(update, [10, 30, 60, 90, 100], base_lr=0.005)
        assert float(restored(micro_step)) == pytest.approx(expected, rel=1e-5)
    optimizer = keras.optimizers.SGD(learning_rate=restored, momentum=0.9)
    assert float(optimizer.learning_rate) == 0.0


def test_scaled_down_schedule_keeps_the_shape_of_the_rule():
    assert hyperrule.schedule_from_total(300, warmup_steps=30) == [30, 90, 180, 270, 300]
    assert hyperrule.scale_lr(0.003, 128) == pytest.approx(0.00075)
    with pytest.raises(ValueError, match="warmup_steps"):
        hyperrule.schedule_from_total(10, warmup_steps=20)
