"""`BitModel`: the functional Keras model class of bit_tf, with a faster `predict` for arrays.

`keras.Model.predict` wraps every call's input in a fresh `tf.data` pipeline and iterator on
the TensorFlow backend. For BiT-R50x1 at 128x128 and one batch of 16 on 2 CPU cores that costs
about 180 ms on top of a ~500 ms forward pass (benchmarks/RESULTS.md). For in-memory arrays
`BitModel.predict` instead slices the batches itself and runs each through the same compiled
predict function (`predict_on_batch`), so `model.predict(images)` costs what the forward pass
costs. Datasets, generators, `steps=`, callbacks and models under a multi-replica
`tf.distribute` strategy take Keras' own path, unchanged.

On TensorFlow a float32 `BitModel` also predicts XLA-compiled, however it was made (built by
`resnet_v2`, compiled and trained by `bit_tf.finetune`, or reloaded from a `.keras` file):
`model.predict_jit_compile` is "auto". Keras' own `jit_compile="auto"` turns XLA off on CPUs
for training, predict and evaluate alike; XLA makes a BiT training step slower there, but its
inference 1.1-1.4x faster (benchmarks/RESULTS.md). Not in bfloat16 or float16: XLA's CPU
convolutions have no bfloat16 kernels of their own, oneDNN's do (1.6x faster, RESULTS.md).
Where bit_tf's native CPU kernels build (`bit_tf.native`: a TensorFlow without GPUs and a C++
compiler), "auto" predicts float32 and bfloat16 models on them instead, without XLA: GroupNorm
and weight standardization as native kernels between oneDNN's convolutions, faster still
(R50x1, 16 images at 128x128: 222 against 237 ms XLA-compiled). Under "auto",
`model.compile(jit_compile=True)` turns XLA on for predict too; set
`model.predict_jit_compile` to True or False to decide for predict alone.

Example:
    >>> import numpy as np, bit_tf
    >>> model = bit_tf.create_model("BiT-S-R50x1", num_classes=10)
    >>> type(model).__name__
    'BitModel'
    >>> model.predict(np.zeros((40, 64, 64, 3), "float32"), batch_size=16, verbose=0).shape
    (40, 10)
"""

from __future__ import annotations

import math
import threading

import keras
import numpy as np


def _xla_predicts_faster(model: keras.Model) -> bool:
    """Whether "auto" means XLA for predict where Keras' own "auto" means none: float32 models
    on TensorFlow (Keras turns XLA off on CPUs), outside `tf.distribute`, whose layers all
    support XLA (Keras' own check). On the other backends Keras' `jit_compile` decides alone."""
    if keras.backend.backend() != "tensorflow" or model._distribute_strategy is not None:
        return False
    layers = list(model._flatten_layers())
    if not all(layer.compute_dtype == "float32" for layer in layers):
        return False
    try:  # Keras' own rule (layers' supports_jit, op determinism, Apple GPUs)
        from keras.src.trainers.trainer import model_supports_jit
    except ImportError:  # a Keras that moved it: the layers' own flags
        return all(getattr(layer, "supports_jit", True) for layer in layers)
    return model_supports_jit(model)


def _native_kernels_serve(model: keras.Model) -> bool:
    """Whether bit_tf's native kernels would run the model's GroupNorms and weight
    standardizations in predict: TensorFlow outside `tf.distribute`, the fused kernels on, the
    native library built. Layers of other dtypes (float16) keep the XLA-compiled kernels."""
    if keras.backend.backend() != "tensorflow" or model._distribute_strategy is not None:
        return False
    from bit_tf.layers import _fused

    fused = _fused()
    return fused is not None and fused.native_kernels_available("float32")


# The model whose predict function is being built on this thread, and the XLA setting its
# `jit_compile` shows Keras meanwhile (other threads, a `fit` among them, see training's).
_BUILDING = threading.local()


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
    `bit_tf.finetune` return one. Everything but `predict` on arrays is `keras.Model`'s.

    Example:
        >>> inputs = keras.Input((32, 32, 3))
        >>> model = BitModel(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
        >>> model.predict(np.ones((5, 32, 32, 3), "float32"), verbose=0).shape
        (5, 3)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Also runs when Keras reloads a saved model (functional from_config calls the class).
        self._predict_jit_compile = "auto"

    @property
    def predict_jit_compile(self) -> bool | str:
        """XLA for `predict` and `predict_on_batch`: True, False, or "auto" (the default).

        True and False decide alone. "auto" means XLA for float32 models on TensorFlow (outside
        `tf.distribute`, where all layers support it), and otherwise whatever
        `model.jit_compile` says. A runtime setting like `run_eagerly`: not saved, a reloaded
        model starts at "auto".

        Example:
            >>> model = bit_tf.create_model("BiT-S-R50x1", num_classes=10)
            >>> model.predict_jit_compile = False  # e.g. to step through predict in a debugger
        """
        return self._predict_jit_compile

    @predict_jit_compile.setter
    def predict_jit_compile(self, value: bool | str) -> None:
        if value not in (True, False, "auto"):
            raise ValueError(f'predict_jit_compile must be True, False or "auto", got {value!r}.')
        self._predict_jit_compile = value
        self.predict_function = None

    @property
    def jit_compile(self):
        """Keras' `jit_compile` (training, evaluate), and the predict setting to Keras' own
        `make_predict_function` while it builds this model's predict function."""
        if getattr(_BUILDING, "model", None) is self:
            return _BUILDING.with_xla
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value) -> None:
        keras.Model.jit_compile.fset(self, value)

    def _predict_mode(self) -> str:
        """How predict runs: "xla" (XLA-compiled), "native" (bit_tf.native's kernels, no XLA)
        or "plain" (neither)."""
        if self.run_eagerly:
            return "plain"
        if self._predict_jit_compile != "auto":
            return "xla" if self._predict_jit_compile else "plain"
        if self.jit_compile:
            return "xla"
        if _native_kernels_serve(self):
            return "native"
        return "xla" if _xla_predicts_faster(self) else "plain"

    def make_predict_function(self, force: bool = False):
        if self.predict_function is not None and not force:
            return self.predict_function
        mode = self._predict_mode()
        self._predicts_natively = mode == "native"
        _BUILDING.model, _BUILDING.with_xla = self, mode == "xla"
        try:
            return super().make_predict_function(force)
        finally:
            _BUILDING.model = None

    def predict_step(self, *arguments):
        """Keras' predict step (`data`, or `state, data` on JAX), traced with bit_tf's native
        kernels where predict runs on them."""
        if not getattr(self, "_predicts_natively", False):
            return super().predict_step(*arguments)
        from bit_tf import fused

        with fused.native_inference():
            return super().predict_step(*arguments)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        if (
            steps is not None
            or callbacks
            or not _is_in_memory(x)
            or len(x) == 0
            or _replicas(self) > 1
        ):
            return super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
        batch_size = 32 if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        total = len(x)
        batches = math.ceil(total / batch_size)
        progress = None
        if verbose == "auto" or verbose:
            progress = keras.utils.Progbar(batches, verbose=1 if verbose == "auto" else verbose)
        outputs = []
        for index in range(batches):
            batch = x[index * batch_size : (index + 1) * batch_size]
            outputs.append(self.predict_on_batch(batch))
            if progress is not None:
                progress.update(index + 1)
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)
