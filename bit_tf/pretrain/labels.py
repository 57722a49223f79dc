"""Stored label ids -> what the upstream loss takes: a class id, or a multi-hot vector.

Example:
    >>> encode = LabelEncoder(num_classes=5, multi_label=True)
    >>> encode(tf.constant([1, 3]))
    <tf.Tensor: shape=(5,), dtype=float32, numpy=array([0., 1., 0., 1., 0.], ...)>
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LabelEncoder:
    """Encodes one example's stored label ids, checking them against the model's head.

    Attributes:
        num_classes: the size of the model's head; labels must be below it.
        multi_label: a float32 multi-hot vector (sigmoid loss) instead of an int32 class id.
        label_offset: added to stored labels, e.g. -1 for ids that start at 1.

    Example:
        >>> LabelEncoder(num_classes=1000)(tf.constant([207]))
        <tf.Tensor: shape=(), dtype=int32, numpy=207>
    """

    num_classes: int
    multi_label: bool = False
    label_offset: int = 0

    def __call__(self, labels: tf.Tensor) -> tf.Tensor:
        """Stored label ids -> an int32 class id, or a float32 multi-hot vector.

        Example:
            >>> LabelEncoder(5, multi_label=True)(tf.constant([1, 3]))
            <tf.Tensor: shape=(5,), dtype=float32, numpy=array([0., 1., 0., 1., 0.], ...)>
        """
        labels = tf.cast(labels, tf.int64) + self.label_offset
        checks = [
            tf.debugging.assert_non_negative(
                labels, message=f"A label is negative (label_offset={self.label_offset})."
            ),
            tf.debugging.assert_less(
                labels,
                tf.cast(self.num_classes, tf.int64),
                message=f"A label is out of range for a head of {self.num_classes} classes; "
                "pass the right --num_classes (or --label_offset=-1 for ids that start at 1).",
            ),
        ]
        with tf.control_dependencies(checks):
            labels = tf.identity(labels)
        if self.multi_label:
            hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
            return tf.reduce_max(tf.concat([hot, tf.zeros([1, self.num_classes])], 0), axis=0)
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.size(labels),
                    1,
                    message="An example has several labels (or none); multi-label data needs "
                    "--multi_label.",
                )
            ]
        ):
            return tf.cast(tf.reshape(labels, [-1])[0], tf.int32)

    def none(self) -> tf.Tensor:
        """A batch of no encoded labels: shape [0] (class ids) or [0, num_classes].

        Example:
            >>> LabelEncoder(5, multi_label=True).none().shape
            TensorShape([0, 5])
        """
        if self.multi_label:
            return tf.zeros([0, self.num_classes], tf.float32)
        return tf.zeros([0], tf.int32)
