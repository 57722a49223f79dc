"""The upstream learning-rate schedule: warm-up, each decay boundary and the end, for BiT-S/M
(90 epochs, decays after 30/60/80) and BiT-L (40 epochs, decays after 23/30/37 as the seed's
table, or 10/23/30/37 as the paper's text)."""

import keras
import pytest

from bit_tf.pretrain.schedule import UpstreamSchedule, upstream_schedule

ILSVRC_2012 = 1_281_167
JFT_300M = 300_000_000


def rate(schedule, step):
    return float(schedule(step))


@pytest.mark.parametrize(
    "size, dataset_size, decay_epochs, total_epochs",
    [
        ("S", ILSVRC_2012, (30, 60, 80), 90),
        ("M", ILSVRC_2012, (30, 60, 80), 90),
        ("L", JFT_300M, (23, 30, 37), 40),
    ],
)
@pytest.mark.parametrize("batch", [4096, 1024])
def test_rate_at_warmup_boundaries_and_end(size, dataset_size, decay_epochs, total_epochs, batch):
    schedule = upstream_schedule(size, dataset_size, batch)
    peak = 0.03 * batch / 256
    per_epoch = dataset_size // batch
    assert schedule.total_steps == total_epochs * per_epoch
    assert schedule.boundaries == tuple(epoch * per_epoch for epoch in decay_epochs)

    # Linear warm-up over 5000 steps from 0.
    assert rate(schedule, 0) == 0.0
    assert rate(schedule, 2500) == pytest.approx(peak / 2, rel=1e-6)
    assert rate(schedule, 4999) == pytest.approx(peak * 4999 / 5000, rel=1e-6)
    assert rate(schedule, 5000) == pytest.approx(peak, rel=1e-6)
    # 10x down after each boundary, not before.
    for index, boundary in enumerate(schedule.boundaries):
        assert rate(schedule, boundary - 1) == pytest.approx(peak * 0.1**index, rel=1e-5)
        assert rate(schedule, boundary) == pytest.approx(peak * 0.1 ** (index + 1), rel=1e-5)
    # The end: three decays in.
    assert rate(schedule, schedule.total_steps - 1) == pytest.approx(peak * 1e-3, rel=1e-5)


def test_peak_rate_of_the_paper_at_batch_4096():
    assert upstream_schedule("S", ILSVRC_2012, 4096).base_learning_rate == pytest.approx(0.48)
    assert upstream_schedule("S", ILSVRC_2012).total_steps == 90 * (ILSVRC_2012 // 4096)


def test_train_steps_and_epochs_keep_the_shape_of_the_schedule():
    short = upstream_schedule("S", ILSVRC_2012, 4096, train_steps=900, warmup_steps=10)
    assert short.total_steps == 900
    assert short.boundaries == (300, 600, 800)
    four_epochs = upstream_schedule("L", 4096 * 10, 4096, epochs=4, warmup_steps=0)
    assert four_epochs.total_steps == 40
    assert four_epochs.boundaries == (23, 30, 37)
    assert rate(four_epochs, 0) == pytest.approx(0.48)  # no warm-up


def test_schedule_is_serializable_and_works_in_an_optimizer():
    schedule = upstream_schedule("M", 100_000, 256, warmup_steps=50)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, UpstreamSchedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 25, 50, *schedule.boundaries, schedule.total_steps):
        assert rate(restored, step) == rate(schedule, step)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    restored_optimizer = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert restored_optimizer.get_config()["learning_rate"] == schedule_config(schedule)
    assert float(restored_optimizer.learning_rate) == 0.0  # step 0 of the warm-up


def schedule_config(schedule):
    return keras.optimizers.schedules.serialize(schedule)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"model_size": "XL"}, "Unknown upstream model size 'XL'"),
        ({"dataset_size": 0}, "dataset_size must be a positive integer, got 0"),
        ({"global_batch_size": -8}, "global_batch_size must be a positive integer, got -8"),
        ({"train_steps": 0}, "train_steps must be a positive integer, got 0"),
        ({"decay_epochs": "lecture"}, "decay_epochs must be one of .*, got 'lecture'"),
        ({"decay_epochs": (60, 30)}, r"increasing epochs between 0 and the recipe's 90, got \[60"),
    ],
)
def test_bad_arguments_say_what_is_wrong(arguments, message):
    settings = {"model_size": "S", "dataset_size": 1000, "global_batch_size": 64, **arguments}
    with pytest.raises(ValueError, match=message):
        upstream_schedule(**settings)


def test_the_seed_decays_bit_l_by_default_and_the_papers_text_on_request():
    per_epoch = JFT_300M // 4096
    seed = upstream_schedule("L", JFT_300M)
    paper = upstream_schedule("L", JFT_300M, decay_epochs="paper")
    assert seed.boundaries == tuple(epoch * per_epoch for epoch in (23, 30, 37))
    assert paper.boundaries == tuple(epoch * per_epoch for epoch in (10, 23, 30, 37))
    assert paper.total_steps == seed.total_steps == 40 * per_epoch
    # Four decays: the rate ends 10^4 below its peak.
    assert rate(paper, paper.total_steps - 1) == pytest.approx(0.48e-4, rel=1e-5)
    # S and M decay after the same epochs in the seed and the paper.
    assert upstream_schedule("M", ILSVRC_2012, decay_epochs="paper").boundaries == (
        upstream_schedule("M", ILSVRC_2012).boundaries
    )
    # Explicit epochs keep their place when training is shortened, like the recipe's.
    short = upstream_schedule("L", JFT_300M, epochs=4, decay_epochs=(10, 20, 30))
    assert short.boundaries == tuple(round(epoch / 10 * per_epoch) for epoch in (10, 20, 30))
