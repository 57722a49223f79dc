"""Distillation as the paper ran it: each recipe row is what a run records, the variants differ
where the paper says (same crop or not, MixUp or not), the fixed teacher computes its targets
once, a teacher at another resolution, and big_vision's evaluation crops."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
from bit_tf.data.eval_crops import eval_short_side, short_side_central_crop
from bit_tf.distill.recipe import DistillConfig, distill
from bit_tf.distill.recipes import RECIPES, pick_recipe, with_recipe
from bit_tf.distill.variants import fixed_teacher_targets, read_targets, variant_batches
from bit_tf.training.run_settings import RunSettingsError

FAST = {"jit_compile": False, "verbose": 0, "seed": 0}

# big_vision configs/proj/distill: (lr, wd, T, batch, crop, epochs, warm-up) per row, and the
# steps on the configs' own train splits (Flowers 1,020; Pet train[:90%] 3,312; Food
# train[:90%] 68,175; SUN 76,128; ImageNet train[:98%] 1,255,544).
EXPECTED = {
    ("flowers", "fast"): (0.003, 3e-4, 10.0, 512, 128, 10_000, 1500, 1_020, 19_922),
    ("flowers", "medium"): (0.001, 1e-4, 1.0, 512, 128, 100_000, 1500, 1_020, 199_219),
    ("flowers", "long"): (0.0003, 1e-5, 1.0, 512, 128, 1_000_000, 1500, 1_020, 1_992_188),
    ("pet", "fast"): (0.01, 1e-3, 5.0, 512, 128, 1_000, 1500, 3_312, 6_469),
    ("pet", "medium"): (0.003, 3e-4, 10.0, 512, 128, 3_000, 1500, 3_312, 19_406),
    ("pet", "long"): (0.003, 1e-5, 2.0, 512, 128, 30_000, 1500, 3_312, 194_062),
    ("food", "fast"): (0.01, 1e-3, 10.0, 512, 128, 100, 1500, 68_175, 13_315),
    ("food", "medium"): (0.001, 3e-4, 10.0, 512, 128, 1_000, 1500, 68_175, 133_154),
    ("food", "long"): (0.01, 1e-4, 5.0, 512, 128, 3_000, 1500, 68_175, 399_463),
    ("sun", "fast"): (0.01, 1e-3, 10.0, 512, 128, 100, 1500, 76_128, 14_869),
    ("sun", "medium"): (0.001, 1e-4, 10.0, 512, 128, 1_000, 1500, 76_128, 148_688),
    ("sun", "long"): (0.01, 3e-5, 10.0, 512, 128, 3_000, 1500, 76_128, 446_062),
    ("imagenet", "fast"): (0.03, 3e-4, 1.0, 4096, 224, 300, 5000, 1_255_544, 91_959),
    ("imagenet", "medium"): (0.03, 3e-4, 1.0, 4096, 224, 1_200, 5000, 1_255_544, 367_835),
    ("imagenet", "long"): (0.03, 3e-4, 1.0, 4096, 224, 9_600, 5000, 1_255_544, 2_942_681),
}
TFDS_NAMES = {
    "flowers": "oxford_flowers102:train",
    "pet": "oxford_iiit_pet:train[:90%]",
    "food": "food101:train[:90%]",
    "sun": "sun397/tfds:4.*.*:train",
    "imagenet": "imagenet2012:train[:98%]",
}


def stripes(count=48, seed=0):
    """Two classes: bright top half (0) or bright bottom half (1), 16x16."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = generator.uniform(0.0, 0.3, (count, 16, 16, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        image[8 * label : 8 * label + 8] += 0.6
    return images, labels


@keras.saving.register_keras_serializable(package="tests")
class CallCounter(keras.layers.Layer):
    """Counts the images it is called on (a real layer of a real teacher)."""

    def build(self, input_shape):
        self.images = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, images):
        self.images.assign_add(tf.cast(tf.shape(images)[0], self.images.dtype))
        return images


def classifier(
    seed: int, classes: int = 2, counter: bool = False, name: str | None = None
) -> keras.Model:
    """A small convolutional classifier of any input size."""
    inputs = keras.Input((None, None, 3))
    x = CallCounter(name="counter")(inputs) if counter else inputs
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.initializers.RandomNormal(stddev=5.0, seed=seed)
    return keras.Model(inputs, keras.layers.Dense(classes, kernel_initializer=head)(x), name=name)


@pytest.mark.parametrize("row", sorted(EXPECTED))
def test_each_recipe_row_is_the_configs_and_picked_by_its_tfds_name(row):
    lr, wd, temperature, batch, crop, epochs, warmup, size, steps = EXPECTED[row]
    recipe = RECIPES[row]
    assert (recipe.base_lr, recipe.weight_decay, recipe.temperature) == (lr, wd, temperature)
    assert (recipe.batch_size, recipe.crop, recipe.epochs, recipe.warmup_steps) == (
        batch,
        crop,
        epochs,
        warmup,
    )
    assert recipe.source.startswith("big_vision configs/proj/distill/")
    config, picked = with_recipe(DistillConfig(patience=row[1]), TFDS_NAMES[row[0]], size)
    assert picked is recipe
    assert (config.base_lr, config.weight_decay, config.temperature) == (lr, wd, temperature)
    assert (config.batch_size, config.crop, config.steps, config.warmup_steps) == (
        batch,
        crop,
        steps,
        warmup,
    )


def test_recipes_by_size_legacy_and_overrides():
    assert [pick_recipe("auto", "fast", "photos/", size).dataset for size in (2_000, 2_001)] == [
        "flowers",
        "pet",
    ]
    assert pick_recipe("size", "fast", None, 500_001).dataset == "imagenet"
    legacy, recipe = with_recipe(DistillConfig(recipe="legacy", patience="fast"), None, 3_312)
    assert (legacy.base_lr, legacy.weight_decay, legacy.temperature, legacy.crop) == (
        0.003,
        3e-4,
        1.0,
        None,
    )
    assert (legacy.steps, legacy.warmup_steps, recipe.name) == (6_469, 1_500, "legacy/fast")
    given, _ = with_recipe(DistillConfig(recipe="pet", temperature=3.0, steps=40), None, 3_312)
    assert (given.temperature, given.steps, given.warmup_steps, given.base_lr) == (
        3.0,
        40,
        10,
        0.003,
    )
    with pytest.raises(ValueError, match="recipe must be one of auto, flowers"):
        pick_recipe("cifar", "fast", None, 10)
    with pytest.raises(ValueError, match="needs the number of training examples"):
        pick_recipe("size", "fast", None, None)
    assert pick_recipe("auto", "fast", None, None).dataset == "legacy"  # tf.data, size unknown


def test_a_run_records_its_recipe_rows_settings_in_its_progress_file(tmp_path):
    teacher, student = classifier(1), classifier(2)
    distill(
        teacher,
        student,
        stripes(),
        recipe="pet",
        patience="fast",
        batch_size=8,
        crop=16,
        steps=2,
        checkpoint_dir=str(tmp_path),
        **FAST,
    )
    settings = json.loads((tmp_path / "progress.json").read_text())["settings"]
    row = RECIPES["pet", "fast"]
    assert settings["recipe"] == "pet/fast" and settings["recipe_source"] == row.source
    assert (settings["base_lr"], settings["weight_decay"], settings["temperature"]) == (
        0.01,
        1e-3,
        5.0,
    )
    assert (settings["batch_size"], settings["crop"], settings["total_steps"]) == (8, 16, 2)
    assert settings["variant"] == "function_matching" and settings["mixup_alpha"] == 1.0
    assert settings["eval_resize"] == "short_side_crop"


def test_variants_differ_in_the_crop_they_share_and_in_mixup():
    source = bit_tf.data.from_arrays(*stripes(32))

    def first(variant, teacher_crop=None):
        batches = variant_batches(source, 8, variant, 12, teacher_crop=teacher_crop, seed=0)
        return next(iter(batches))

    def mixed(labels):
        return bool(((labels > 0) & (labels < 1)).numpy().any())

    images, labels = first("function_matching")
    assert images.shape == (8, 12, 12, 3) and mixed(labels)  # one view for both, MixUp
    images, labels = first("consistent")
    assert images.shape == (8, 12, 12, 3) and not mixed(labels)  # one view, no MixUp
    views, labels = first("independent", teacher_crop=12)
    assert not mixed(labels)
    assert not np.allclose(views["student"], views["teacher"])  # a crop of its own
    # Two resolutions: the same crop at 12 and at 24 px (the teacher's, brought back to 12,
    # is the student's); independent crops are not.
    differences = {}
    for variant in ("consistent", "independent"):
        views, _ = first(variant, teacher_crop=24)
        assert views["teacher"].shape == (8, 24, 24, 3)
        back = tf.image.resize(views["teacher"], (12, 12), method="area")
        differences[variant] = float(tf.reduce_mean(tf.abs(back - views["student"])))
    assert differences["consistent"] < 0.3 * differences["independent"], differences


def test_the_fixed_teacher_computes_its_targets_once():
    images, labels = stripes(48)
    counted = classifier(3, counter=True)
    _, history = distill(
        counted, classifier(4), (images, labels), variant="fixed_teacher", batch_size=8,
        crop=16, steps=6, cache="memory", **FAST,
    )  # fmt: skip
    # Once per train image before training, never in the 6 steps of 8 images.
    assert float(counted.get_layer("counter").images) == 48
    assert len(history.history["loss"]) >= 1
    online = classifier(3, counter=True)
    distill(online, classifier(4), (images, labels), variant="consistent", batch_size=8,
            crop=16, steps=6, **FAST)  # fmt: skip
    assert float(online.get_layer("counter").images) == 6 * 8


def test_the_fixed_teachers_outputs_are_a_file_of_the_run_that_a_rerun_reads(tmp_path):
    images, labels = stripes(48)
    settings = dict(variant="fixed_teacher", batch_size=8, crop=16, steps=4, cache="memory")
    folder = str(tmp_path / "run")

    def run(teacher, **overrides):
        student = classifier(4, name="student")
        distill(teacher, student, (images, labels), checkpoint_dir=folder, **settings,
                **overrides, **FAST)  # fmt: skip

    teacher = classifier(3, counter=True, name="teacher")
    run(teacher)
    (written,) = (tmp_path / "run").glob("fixed_teacher_outputs-*.npy")
    on_disk = np.load(written)
    assert on_disk.shape == (48, 2) and float(teacher.get_layer("counter").images) == 48
    # The same rows as computed in memory, on the unaugmented central crops.
    source = bit_tf.data.from_arrays(images, labels)
    np.testing.assert_allclose(fixed_teacher_targets(teacher, source, 16, 8), on_disk, atol=1e-6)
    # A run that starts again in the folder, with the same teacher, images and crop, reads it.
    again = classifier(3, counter=True, name="teacher")
    run(again, overwrite=True)
    assert float(again.get_layer("counter").images) == 0
    # A run refused for other settings computes nothing and writes nothing.
    other = classifier(5, counter=True, name="another_teacher")
    with pytest.raises(RunSettingsError):
        run(other)
    assert float(other.get_layer("counter").images) == 0
    assert len(list((tmp_path / "run").glob("fixed_teacher_outputs-*.npy"))) == 1
    assert read_targets(str(written), 48, 3) is None  # another task's shape
    written.write_bytes(written.read_bytes()[:-8])  # a cut file is not read (computed again)
    assert read_targets(str(written), 48, 2) is None


@pytest.mark.parametrize(
    "variant, teacher_crop",
    [
        ("function_matching", None),
        ("consistent", None),
        ("independent", None),
        ("fixed_teacher", None),
        ("function_matching", 24),
    ],
)
def test_a_short_run_of_each_variant_on_the_digits_completes(variant, teacher_crop, tmp_path):
    train, validation = bit_tf.data.load_digits()
    teacher = classifier(5, classes=10)
    student, history = distill(
        teacher, classifier(6, classes=10), train, validation, variant=variant,
        teacher_crop=teacher_crop, crop=16, batch_size=16, steps=4, validation_every=2,
        checkpoint_dir=str(tmp_path), **FAST,
    )  # fmt: skip
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["finished"] and progress["settings"]["variant"] == variant
    assert (tmp_path / "best.keras").exists() and len(history.history["val_agreement"]) == 2
    if teacher_crop:  # the student at 16 px learnt from a teacher at 24
        assert progress["settings"]["teacher_crop"] == 24 and progress["settings"]["crop"] == 16


def test_evaluation_resizes_the_shorter_side_and_takes_the_central_crop():
    assert (eval_short_side(128), eval_short_side(224)) == (160, 256)  # big_vision's pairs
    # A 40x80 image whose columns count 0..79: shorter side to 20 halves it; the central 16
    # of the 40 columns left are columns 12..27, i.e. 24..55 of the original.
    image = tf.tile(tf.range(80, dtype=tf.float32)[None, :, None] / 80, (40, 1, 3))
    cropped = short_side_central_crop(image, 20, 16)
    assert cropped.shape == (16, 16, 3)
    np.testing.assert_allclose(cropped[0, :, 0], (np.arange(12, 28) * 2 + 0.5) / 80, rtol=1e-6)
    source = bit_tf.data.from_arrays(np.asarray(image[None]), np.array([0]), num_classes=2)
    batch, _ = next(iter(bit_tf.data.eval_pipeline(source, 1, 16, short_side=20)))
    np.testing.assert_allclose(batch[0], cropped)
    with pytest.raises(ValueError, match="must not be larger than short_side"):
        short_side_central_crop(image, 10, 16)
