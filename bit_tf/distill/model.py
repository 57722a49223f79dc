"""`Distiller`: a Keras model that trains a student to match a frozen teacher's outputs.

Function matching as Beyer et al. ("Knowledge distillation: A good teacher is patient and
consistent", 2022) do it: in every step the teacher and the student see the same (augmented)
images, and the loss is the KL divergence between the teacher's and the student's softmax at a
temperature `T`, times `T**2` (`DistillationLoss`). The teacher's logits are computed in the
step, in inference mode (`training=False`), and no gradient reaches it.

`Distiller` is a `keras.Model`: `fit` runs Keras' own training step (gradient clipping,
accumulation, `tf.distribute` strategies and mixed precision come from the optimizer and Keras)
and `evaluate` reports the student's `accuracy`, the teacher's `teacher_accuracy` and their
`agreement` (the fraction of images on which their top classes are the same). Saving a
Distiller saves the student, the optimizer and the metrics but not the teacher (it never
changes and can be much larger): after `keras.saving.load_model`, give it back with
`set_teacher`.

This module needs Keras only (no TensorFlow-specific code).

Example:
    >>> from bit_tf.distill.model import Distiller
    >>> distiller = Distiller(student, teacher, temperature=1.0)
    >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> distiller.fit(batches_of_images_and_labels, epochs=10)
    >>> distiller.student.save("student.keras")
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["DistillationLoss", "Distiller"]


@keras.saving.register_keras_serializable(package="bit_tf")
class DistillationLoss(keras.losses.Loss):
    """KL(softmax(teacher / T) || softmax(student / T)) * T**2 per example, from logits.

    Called as `loss(teacher_logits, student_logits)` (the teacher's logits are the target).
    Zero where the student's logits equal the teacher's; the `T**2` factor keeps the gradient's
    size independent of `T` (Hinton et al., 2015), as big_vision's distillation does.

    Args:
        temperature: T, positive; 1 compares the models' own output distributions.

    Example:
        >>> loss = DistillationLoss(temperature=2.0)
        >>> float(loss(teacher_logits, teacher_logits))
        0.0
    """

    def __init__(self, temperature: float = 1.0, name: str = "distillation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}.")
        self.temperature = temperature

    def call(self, teacher_logits, student_logits):
        teacher_logits = ops.cast(teacher_logits, "float32") / self.temperature
        student_logits = ops.cast(student_logits, "float32") / self.temperature
        teacher_log_probabilities = ops.log_softmax(teacher_logits, axis=-1)
        student_log_probabilities = ops.log_softmax(student_logits, axis=-1)
        divergence = ops.sum(
            ops.exp(teacher_log_probabilities)
            * (teacher_log_probabilities - student_log_probabilities),
            axis=-1,
        )
        return divergence * self.temperature**2

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


def _views(images) -> tuple:
    """(the student's images, the teacher's images, the teacher's precomputed logits or None)
    of a batch: one tensor for both models, or a dict with "student" and "teacher" (or
    "teacher_logits")."""
    if not isinstance(images, dict):
        return images, images, None
    return images["student"], images.get("teacher"), images.get("teacher_logits")


class _NotSaved:
    """Holds the teacher out of sight of Keras' tracking and saving (it is no sublayer)."""

    def __init__(self, model: keras.Model | None):
        self.model = model


@keras.saving.register_keras_serializable(package="bit_tf")
class Distiller(keras.Model):
    """A student trained on a frozen teacher's softened outputs for the same images.

    `distiller(images)` returns `{"student": logits, "teacher": logits}`; the teacher runs
    with `training=False` and its output goes through `stop_gradient`. The trainable weights
    are the student's only. Compile it with an optimizer and no loss: the loss is
    `DistillationLoss(temperature)`. Batches are (images, one-hot labels); the labels only
    feed the metrics. The images are one batch for both models, or a dict: {"student": ...,
    "teacher": ...} (two views, e.g. two resolutions) or {"student": ..., "teacher_logits":
    ...} (a fixed teacher's outputs, computed before; the teacher is then not run).

    Args:
        student: the Keras model to train; it outputs logits of the teacher's classes.
        teacher: any Keras model that outputs logits; None until `set_teacher` (a loaded
            Distiller has none).
        temperature: the distillation temperature T.

    Example:
        >>> distiller = Distiller(bit_tf.create_model("BiT-S-R18x1", num_classes=10), teacher)
        >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> distiller.evaluate(validation_batches, return_dict=True)
        {'accuracy': ..., 'agreement': ..., 'loss': ..., 'teacher_accuracy': ...}
        >>> resumed = keras.saving.load_model("last.keras")
        >>> resumed.set_teacher(teacher)
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model | None = None,
        temperature: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.student = student
        self.distillation_loss = DistillationLoss(temperature)
        self._teacher = _NotSaved(None)
        self.set_teacher(teacher)
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
        self.teacher_accuracy = keras.metrics.CategoricalAccuracy(name="teacher_accuracy")
        self.agreement = keras.metrics.Mean(name="agreement")

    @property
    def temperature(self) -> float:
        """The distillation temperature T."""
        return self.distillation_loss.temperature

    def set_teacher(self, teacher: keras.Model | None) -> None:
        """Gives the Distiller its teacher (not saved with it, so needed after loading).

        Example:
            >>> distiller = keras.saving.load_model("runs/distill/last.keras")
            >>> distiller.set_teacher(keras.saving.load_model("teacher.keras"))
        """
        if teacher is not None and not callable(teacher):
            raise TypeError(f"teacher must be a Keras model, got {type(teacher).__name__}.")
        self._teacher.model = teacher

    def build(self, input_shape=None):
        # The student is built already; the teacher is no part of the saved state.
        if not self.student.built:
            self.student.build(input_shape)
        self.built = True

    def call(self, images, training=False):
        student_images, teacher_images, fixed_logits = _views(images)
        student_logits = self.student(student_images, training=training)
        if fixed_logits is not None:
            teacher_logits = fixed_logits
        else:
            teacher = self._teacher.model
            if teacher is None:
                raise ValueError(
                    "This Distiller has no teacher (a loaded Distiller does not keep one); "
                    "give it with set_teacher(teacher)."
                )
            teacher_logits = ops.stop_gradient(teacher(teacher_images, training=False))
        return {
            "student": ops.cast(student_logits, "float32"),
            "teacher": ops.cast(teacher_logits, "float32"),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.distillation_loss(y_pred["teacher"], y_pred["student"])
        if self.losses:  # the student's regularization losses, as Keras adds them
            loss = loss + super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        student, teacher = y_pred["student"], y_pred["teacher"]
        if y is not None:
            self.accuracy.update_state(y, student)
            self.teacher_accuracy.update_state(y, teacher)
        same = ops.equal(ops.argmax(student, axis=-1), ops.argmax(teacher, axis=-1))
        self.agreement.update_state(ops.cast(same, "float32"))
        return self.get_metrics_result()

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        student = keras.saving.deserialize_keras_object(config.pop("student"))
        return cls(student=student, **config)
