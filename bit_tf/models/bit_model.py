"""`BitModel`: the functional Keras model class of bit_tf: a faster `predict` for arrays, and
the names of its classes.

A classifier fine-tuned on named classes (image folders, TFDS label names) keeps the names in
`class_names`, which travel in its config: `keras.models.load_model` restores them, and the
exporters (`hub_export.export_serving`) use them.

`keras.Model.predict` wraps every call's input in a fresh `tf.data` pipeline and iterator on
the TensorFlow backend, which costs more than a forward pass of a few images. For in-memory
arrays `BitModel.predict` slices the batches itself and runs each through Keras' compiled
predict function (`predict_on_batch`), so `model.predict(images)` costs what the forward pass
costs. Datasets, generators, `steps=`, callbacks and models under a multi-replica
`tf.distribute` strategy take Keras' own path, unchanged.

Images go in on the scale of `bit_tf.models.input_scale`: uint8 pixels are divided by 255 (uint16 by
65535), in eager calls, `predict` and compiled graphs alike; float images are expected in
[0, 1], and eager calls, `predict_on_batch` and `predict` on arrays (every batch) refuse
float images whose largest value is above 1.5 (pixel values in 0-255) with a `ValueError`.
Inside compiled graphs (`fit`, `predict` on datasets, `tf.function`) floats are not checked.

`predict` and `predict_on_batch` on zero images return arrays of zero rows (shape
`(0, classes)`) without running the model.

Its predict step declares `bit_tf.kernels.local_inference()`: the graph runs in this process
only, so the kernels may use bit_tf's C++ kernels for it. For XLA compilation of predict, use
Keras' own switch: `model.jit_compile = True` (or `model.compile(..., jit_compile=True)`).

Example:
    >>> import numpy as np, bit_tf
    >>> model = bit_tf.create_model("BiT-S-R50x1", num_classes=10)
    >>> type(model).__name__
    'BitModel'
    >>> model.predict(np.zeros((40, 64, 64, 3), "float32"), batch_size=16, verbose=0).shape
    (40, 10)
    >>> model.class_names = [f"digit {index}" for index in range(10)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from bit_tf import kernels
from bit_tf.models import input_scale


def _replicas(model: keras.Model) -> int:
    """Replicas of the model's `tf.distribute` strategy (1 without one, or off TensorFlow).

    Keras' `predict_on_batch` hands every replica the whole batch under a multi-replica
    strategy (2 replicas: twice the rows), so such models take Keras' `predict`, which splits
    the batches between the replicas.
    """
    strategy = getattr(model, "distribute_strategy", None)
    return 1 if strategy is None else strategy.num_replicas_in_sync


def _is_in_memory(x) -> bool:
    """NumPy arrays and backend tensors (not datasets, generators or structures of inputs)."""
    return isinstance(x, np.ndarray) or keras.ops.is_tensor(x)


@keras.saving.register_keras_serializable(package="bit_tf")
class BitModel(keras.Model):
    """A functional `keras.Model` whose `predict` skips `tf.data` for in-memory arrays.

    Build it like any functional model; `bit_tf.create_model`, `bit_tf.resnet_v2` and
    `bit_tf.finetune` return one. Everything but `predict` on arrays and `class_names` is
    `keras.Model`'s.

    Args:
        *args, **kwargs: those of a functional `keras.Model` (inputs, outputs, name, ...).
        class_names: one name per output class, in class-id order; None where unknown.
            Saved in the model's config, so `keras.models.load_model` restores it.

    Example:
        >>> inputs = keras.Input((32, 32, 3))
        >>> model = BitModel(inputs, keras.layers.GlobalAveragePooling2D()(inputs),
        ...                  class_names=["red", "green", "blue"])
        >>> model.predict(np.ones((5, 32, 32, 3), "float32"), verbose=0).shape
        (5, 3)
        >>> keras.models.load_model(saved_path).class_names
        ('red', 'green', 'blue')
    """

    def __init__(self, *args, class_names: Sequence[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_names = class_names

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each output class, in class-id order; None where unknown."""
        return None if self._class_names is None else tuple(self._class_names)

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        if names is None:
            self._class_names = None
            return
        if isinstance(names, str):
            raise TypeError(f"class_names must be a sequence of names, got the string {names!r}.")
        names = tuple(str(name) for name in names)
        classes = self.output_shape[-1] if isinstance(self.output_shape, tuple) else None
        if classes is not None and len(names) != classes:
            raise ValueError(
                f"{len(names)} class names given for model {self.name!r}, whose output has "
                f"{classes} classes; give exactly one name per class, in class-id order."
            )
        self._class_names = names

    def get_config(self) -> dict:
        config = super().get_config()
        if self.class_names is not None:
            config["class_names"] = list(self.class_names)
        return config

    def _takes_one_input(self) -> bool:
        return len(self.inputs) == 1

    def __call__(self, *args, **kwargs):
        if self._takes_one_input():
            input_scale.check_call_arguments(args, kwargs, f"model {self.name!r}")
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None, mask=None, **kwargs):
        """The functional graph on `inputs`, uint8 / uint16 images turned into floats in [0, 1]
        first (`bit_tf.models.input_scale`)."""
        if self._takes_one_input() and not isinstance(inputs, (list, tuple, dict)):
            inputs = input_scale.to_unit_scale(inputs, self.inputs[0].dtype, f"model {self.name!r}")
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _check_first_batch(self, x, batch_size: int | None) -> None:
        if self._takes_one_input() and _is_in_memory(x):
            self._check_batch_shape(tuple(x.shape))
            if len(x):
                batch = x[: batch_size or 32]
                input_scale.check_call_arguments((batch,), {}, f"model {self.name!r}")

    def _check_batch_shape(self, shape: tuple) -> None:
        """Raises ValueError for an array that is not a batch of images of the model's
        channels, saying what it looks like instead (one image, channels first)."""
        channels = self.inputs[0].shape[-1]
        if len(shape) == 4 and (channels is None or shape[-1] == channels):
            return
        hint = ""
        if len(shape) == 3 and shape[-1] == channels:
            hint = "; for one image, add the batch axis: image[np.newaxis]"
        elif len(shape) == 4 and shape[1] == channels:
            hint = "; channels first? Move them last: np.transpose(images, (0, 2, 3, 1))"
        raise ValueError(
            f"Model {self.name!r} takes a batch of images (batch, height, width, {channels}), "
            f"got an array of shape {shape}{hint}."
        )

    def _empty_outputs(self, x):
        """The outputs of zero images: arrays of zero rows, of the outputs' shapes and dtypes."""
        shape = tuple(x.shape)
        dtype = keras.backend.standardize_dtype(x.dtype)
        outputs = self.compute_output_spec(keras.KerasTensor(shape, dtype))
        return keras.tree.map_structure(lambda spec: np.zeros(spec.shape, spec.dtype), outputs)

    def predict_on_batch(self, x):
        self._check_first_batch(x, len(x) if _is_in_memory(x) else None)
        if self._takes_one_input() and _is_in_memory(x) and len(x) == 0:
            return self._empty_outputs(x)
        return super().predict_on_batch(x)

    def predict_step(self, *arguments):
        """Keras' predict step (`data`, or `state, data` on JAX), traced as local inference."""
        with kernels.local_inference():
            return super().predict_step(*arguments)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        self._check_first_batch(x, batch_size if isinstance(batch_size, int) else None)
        if steps is None and self._takes_one_input() and _is_in_memory(x) and len(x) == 0:
            return self._empty_outputs(x)  # Keras' own path fails on zero images
        if steps is not None or callbacks or not _is_in_memory(x) or _replicas(self) > 1:
            return super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        batches = math.ceil(len(x) / batch_size)
        progress = None
        if verbose == "auto" or verbose:
            progress = keras.utils.Progbar(batches, verbose=1 if verbose == "auto" else verbose)
        outputs = []
        for index in range(batches):
            batch = x[index * batch_size : (index + 1) * batch_size]
            if index:  # each batch's pixel scale (the first was checked above)
                input_scale.check_call_arguments((batch,), {}, f"model {self.name!r}")
            outputs.append(super().predict_on_batch(batch))
            if progress is not None:
                progress.update(index + 1)
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)
