"""distill: the teacher is never updated, teacher and student see the same images in a step, the
loss is zero for a student equal to its teacher, the student learns the teacher's function;
the schedule, optimizer and augmentation follow the paper's recipe."""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
from bit_tf.distill.data import consistent_batches, inception_crop
from bit_tf.distill.model import DistillationLoss, Distiller
from bit_tf.distill.optimizer import WarmupCosineDecay, distillation_optimizer
from bit_tf.distill.recipe import DistillConfig, distill
from bit_tf.distill.schedule import patient_steps, warmup_steps

FAST = {"crop": 16, "jit_compile": False, "verbose": 0, "seed": 0}
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stripes(count=48, seed=0):
    """Two classes a flip cannot confuse: bright top half (0) or bright bottom half (1)."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = generator.uniform(0.0, 0.3, (count, 16, 16, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        image[8 * label : 8 * label + 8] += 0.6
    return images, labels


@keras.saving.register_keras_serializable(package="tests")
class Recorder(keras.layers.Layer):
    """Keeps the last batch of images it was called on (a batch of `batch` 16x16 images)."""

    def __init__(self, batch=8, **kwargs):
        super().__init__(**kwargs)
        self.batch = batch

    def build(self, input_shape):
        self.seen = self.add_weight(
            shape=(self.batch, 16, 16, 3), initializer="zeros", trainable=False, name="seen"
        )

    def call(self, images):
        self.seen.assign(images)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "batch": self.batch}


def small_classifier(seed: int, recorder: bool = False) -> keras.Model:
    """A small convolutional classifier of the two stripes classes, with non-zero logits."""
    initializer = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((16, 16, 3))
    x = Recorder(name="recorder")(inputs) if recorder else inputs
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=initializer)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head_initializer = keras.initializers.RandomNormal(stddev=5.0, seed=seed)
    outputs = keras.layers.Dense(2, kernel_initializer=head_initializer, name="head")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{seed}")


def test_distillation_loss_is_the_tempered_kl_divergence_and_zero_for_equal_logits():
    generator = np.random.default_rng(0)
    teacher = generator.normal(size=(4, 5)).astype(np.float32) * 3
    student = generator.normal(size=(4, 5)).astype(np.float32)
    for temperature in (1.0, 4.0):
        loss = DistillationLoss(temperature)
        assert float(loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
        p = np.exp(teacher / temperature) / np.exp(teacher / temperature).sum(-1, keepdims=True)
        q = np.exp(student / temperature) / np.exp(student / temperature).sum(-1, keepdims=True)
        expected = temperature**2 * np.mean(np.sum(p * np.log(p / q), axis=-1))
        assert float(loss(teacher, student)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        DistillationLoss(0.0)


def test_the_teacher_is_never_updated_and_sees_the_students_images():
    teacher = small_classifier(seed=1, recorder=True)
    student = small_classifier(seed=2, recorder=True)
    teacher_weights = [w.copy() for w in teacher.get_layer("head").get_weights()]
    teacher_weights += teacher.layers[2].get_weights()  # the convolution
    student_before = [w.copy() for w in student.get_layer("head").get_weights()]

    trained, history = distill(
        teacher,
        student,
        stripes(),
        batch_size=8,
        steps=3,
        base_lr=0.1,
        warmup_steps=0,
        validation_every=3,
        **FAST,
    )
    assert trained is student and teacher.trainable  # restored after the run
    teacher_after = teacher.get_layer("head").get_weights() + teacher.layers[2].get_weights()
    for before, after in zip(teacher_weights, teacher_after, strict=True):
        assert np.array_equal(before, after)
    assert not np.array_equal(student_before[0], student.get_layer("head").get_weights()[0])
    # Consistency: in the last step both models were called on one and the same batch, an
    # augmented and mixed one (no stripes image in [0, 0.9] with both halves' statistics).
    seen_by_teacher = keras.ops.convert_to_numpy(teacher.get_layer("recorder").seen)
    seen_by_student = keras.ops.convert_to_numpy(student.get_layer("recorder").seen)
    assert np.abs(seen_by_teacher).sum() > 0
    np.testing.assert_array_equal(seen_by_teacher, seen_by_student)
    assert len(history.history["loss"]) == 1


def test_a_student_equal_to_its_teacher_has_zero_loss_and_full_agreement():
    teacher = small_classifier(seed=3)
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    _, history = distill(
        teacher,
        student,
        stripes(),
        stripes(16, seed=1),
        batch_size=8,
        steps=2,
        base_lr=0.0,
        warmup_steps=0,
        validation_every=2,
        **FAST,
    )
    assert history.history["loss"][0] == pytest.approx(0.0, abs=1e-6)
    assert history.history["val_loss"][0] == pytest.approx(0.0, abs=1e-6)
    assert history.history["val_agreement"][0] == 1.0
    # Another student: a positive loss, which training lowers.
    student = small_classifier(seed=4)
    validation_images = stripes(16, seed=1)[0]
    loss = DistillationLoss(temperature=2.0)
    before = float(loss(teacher(validation_images), student(validation_images)))
    _, history = distill(
        teacher,
        student,
        stripes(),
        stripes(16, seed=1),
        batch_size=8,
        steps=24,
        base_lr=0.03,
        warmup_steps=2,
        validation_every=8,
        temperature=2.0,
        **FAST,
    )
    assert before > 0.01 and history.history["val_loss"][-1] < 0.5 * before, (
        before,
        history.history["val_loss"],
    )


def test_a_saved_distiller_keeps_the_student_and_optimizer_but_not_the_teacher(tmp_path):
    teacher, student = small_classifier(seed=5), small_classifier(seed=6)
    distiller = Distiller(student, teacher, temperature=3.0)
    distiller.compile(optimizer=distillation_optimizer(0.01, 1e-3, 10, 2), jit_compile=False)
    images, labels = stripes(16)
    distiller.fit(images, keras.ops.one_hot(labels, 2), batch_size=8, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert loaded.temperature == 3.0 and int(loaded.optimizer.iterations) == 2
    assert loaded.optimizer.not_decayed == ("bias", "gamma", "beta")
    for saved, original in zip(loaded.student.get_weights(), student.get_weights(), strict=True):
        assert np.array_equal(saved, original)
    with pytest.raises(ValueError, match="set_teacher"):
        loaded(images[:2])
    loaded.set_teacher(teacher)
    outputs = loaded(images[:2])
    np.testing.assert_allclose(outputs["teacher"], teacher(images[:2]), rtol=1e-6)


def test_the_schedule_is_the_papers_for_the_training_sets_size():
    assert patient_steps(1_020, 512, "fast") == 19_922  # Flowers: 10,000 epochs
    assert patient_steps(3_312, 512, "long") == 194_063  # Pet: 30,000 epochs
    assert patient_steps(1_281_167, 4096, "medium") == 375_342  # ImageNet: 1,200 epochs
    assert warmup_steps(19_922, 1_020) == 1_500 and warmup_steps(375_342, 1_281_167) == 5_000
    assert warmup_steps(800) == 200
    with pytest.raises(ValueError, match="patience must be one of fast, medium, long"):
        patient_steps(1_000, 512, "slow")
    schedule = WarmupCosineDecay(0.01, total_steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100, 150)]
    assert rates == pytest.approx([0.0, 0.005, 0.01, 0.005, 0.0, 0.0], abs=1e-7)
    accumulated = WarmupCosineDecay(0.01, 100, 10, gradient_accumulation_steps=4)
    assert float(accumulated(4 * 55 + 3)) == pytest.approx(0.005)


def test_weight_decay_follows_the_schedule_and_spares_biases_and_norms():
    optimizer = distillation_optimizer(0.01, 1e-3, total_steps=10, warmup_steps=0, clip_norm=1.0)
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    optimizer.apply([np.zeros((2, 2), np.float32), np.zeros((2,), np.float32)], [kernel, bias])
    # Zero gradients: the kernel only decays, by wd * lr(0) / lr = 1e-3; the bias not at all.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 1.0 - 1e-3, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias), 1.0)
    assert optimizer.global_clipnorm == 1.0 and optimizer.beta_2 == 0.999


def test_consistent_batches_are_inception_crops_flips_and_one_mixup_per_batch():
    images, labels = stripes(32)
    source = bit_tf.data.from_arrays(images, labels)
    first = next(iter(consistent_batches(source, 8, 12, mixup_alpha=1.0, seed=0)))
    again = next(iter(consistent_batches(source, 8, 12, mixup_alpha=1.0, seed=0)))
    assert first[0].shape == (8, 12, 12, 3) and first[1].shape == (8, 2)
    np.testing.assert_array_equal(first[0], again[0])  # reproducible from the seed
    mixed_labels = keras.ops.convert_to_numpy(first[1])
    np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
    assert ((mixed_labels > 0) & (mixed_labels < 1)).any()  # MixUp mixed the labels
    # Crops of 5% to 100% of the area: a crop of a gradient image spans less than it.
    ramp = tf.tile(tf.linspace(0.0, 1.0, 64)[None, :, None], (64, 1, 3))
    spans = []
    for index in range(20):
        crop = inception_crop(ramp, 16, tf.constant([index, 7], tf.int64))
        spans.append(float(crop[0, -1, 0] - crop[0, 0, 0]))
    assert min(spans) < 0.5 and max(spans) > 0.6, spans
    with pytest.raises(ValueError, match="min_crop_area"):
        consistent_batches(source, 8, 12, min_crop_area=0.0)


def test_bad_settings_are_refused_before_training():
    teacher = small_classifier(seed=7)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        distill(teacher, "BiT-S-R18x1", stripes(), lr=0.1)
    with pytest.raises(ValueError, match=r"outputs \(None, 2\), not the logits of the task's 3"):
        images, _ = stripes()
        distill(teacher, "BiT-S-R18x1", (images, np.arange(48) % 3), **FAST)
    with pytest.raises(ValueError, match="temperature must be positive"):
        distill(teacher, "BiT-S-R18x1", stripes(), temperature=0)
    with pytest.raises(ValueError, match="neither a .keras file nor a released checkpoint"):
        distill("not-a-teacher", "BiT-S-R18x1", stripes())
    assert dataclasses.asdict(DistillConfig())["patience"] == "medium"


@pytest.mark.slow
def test_the_example_in_quick_mode_compares_distilled_and_label_trained_students(tmp_path):
    environment = dict(
        os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg"
    )
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "examples", "distill.py"),
            "--quick",
            f"--output_dir={tmp_path}",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (tmp_path / "distill.md").read_text()
    assert "| Steps | From labels: accuracy (%) | Distilled: accuracy (%) |" in table
    rows = [line for line in table.splitlines() if line.startswith(("| 4 |", "| 8 |"))]
    assert len(rows) == 2, table
    with open(tmp_path / "distill.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
