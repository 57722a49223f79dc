"""TF-Hub modules in Keras 3: `HubLayer` fine-tunes a SavedModel, `from_hub` rebuilds a model.

`tensorflow_hub.KerasLayer` is a tf_keras layer and cannot enter a Keras 3 model. `HubLayer`
is its Keras 3 counterpart for Reusable SavedModels (TF-Hub's API: `__call__(inputs,
training)`, `variables`, `trainable_variables`): the module's variables become the layer's
weights, so `model.fit` trains them. `from_hub` goes further for BiT modules: it reads the
official variable names and returns a native `bit_tf` Keras model holding the module's weights.

Handles are local folders, local `.tar.gz` archives (unpacked safely into a cache), or anything
`tensorflow_hub` resolves (`http(s)://.../*.tar.gz`, `gs://...`, Kaggle and tfhub.dev handles).
TensorFlow and tensorflow_hub are imported on first use.

Example:
    >>> import keras, bit_tf
    >>> inputs = keras.Input((128, 128, 3))
    >>> features = bit_tf.HubLayer("https://example.org/bit/m-r50x1/1.tar.gz", trainable=True)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(features(inputs)))
    >>> native = bit_tf.from_hub("exports/bit_m-r50x1")  # a bit_tf Keras model, same weights
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import keras
import numpy as np

from bit_tf.models import input_scale
from bit_tf.models.archives import UnsafeArchiveError as UnsafeArchiveError  # re-exported
from bit_tf.models.archives import extract_archive_safely
from bit_tf.models.resnet_v2 import resnet_v2
from bit_tf.models.weights import (
    HEAD_KERNEL,
    CheckpointError,
    describe_layout,
    official_name,
    official_variables,
)

_CACHE_ENV = "BIT_TF_HUB_CACHE"


def resolve_handle(handle: str) -> str:
    """Turns a hub handle into a local SavedModel folder.

    Local folders are used as they are; a local `.tar.gz` is unpacked safely into a cache
    (`$BIT_TF_HUB_CACHE`, default `~/.keras/bit_tf_hub`) keyed by its content hash; any other
    handle goes to `tensorflow_hub.resolve` (which honours `TFHUB_CACHE_DIR`).

    Example:
        >>> resolve_handle("published/bit/m-r50x1/1.tar.gz")
        '/home/me/.keras/bit_tf_hub/3f5a...'
    """
    handle = os.fspath(handle)
    scheme = urllib.parse.urlparse(handle).scheme
    is_local = scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")
    if is_local:
        path = handle[len("file://") :] if handle.startswith("file://") else handle
        if os.path.isdir(path):
            return path
        if os.path.isfile(path) and path.endswith((".tar", ".tar.gz", ".tgz")):
            return _unpack_cached(path)
        if os.path.exists(path):
            raise ValueError(
                f"Hub handle {handle!r} is a file but not a .tar/.tar.gz archive; pass a "
                "SavedModel folder, an archive of one, or a URL."
            )
        raise FileNotFoundError(
            f"Hub handle {handle!r} is neither an existing SavedModel folder nor a .tar.gz "
            "archive (nor a URL)."
        )
    import tensorflow_hub as hub

    return hub.resolve(handle)


def _unpack_cached(archive_path: str) -> str:
    digest = hashlib.sha256()
    with open(archive_path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    cache = os.environ.get(_CACHE_ENV, os.path.join(os.path.expanduser("~"), ".keras"))
    target = os.path.join(cache, "bit_tf_hub", digest.hexdigest()[:32])
    if os.path.isdir(target):
        return target
    try:
        return extract_archive_safely(archive_path, target)
    except FileExistsError:  # another process unpacked it meanwhile
        return target


def _load(handle: str):
    import tensorflow as tf

    return tf.saved_model.load(resolve_handle(handle))


def _in_safe_mode() -> bool:
    """Whether Keras refuses to run code from a model file now, as it decides for Python
    lambdas (asked through the public `keras.layers.Lambda.from_config`): True while
    `keras.saving.load_model` runs in safe mode (its default), False with `safe_mode=False`
    or after `keras.config.enable_unsafe_deserialization()`."""
    config = keras.layers.Lambda(lambda inputs: inputs).get_config()
    try:
        keras.layers.Lambda.from_config(config)
    except ValueError:
        return True
    return False


def _require_tensorflow_backend(what: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{what} runs TensorFlow SavedModels and needs the TensorFlow Keras backend, but "
            f"KERAS_BACKEND is {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow, or "
            "use bit_tf.from_hub(handle) to get a native model that runs on any backend."
        )


@keras.saving.register_keras_serializable(package="bit_tf")
class HubLayer(keras.layers.Layer):
    """A Keras 3 layer around a TF-Hub Reusable SavedModel, trainable with `model.fit`.

    The module's `trainable_variables` become the layer's trainable weights (shared, not
    copied: training updates the module itself), its other variables non-trainable weights.
    `trainable=False` freezes them all. The layer calls the module with
    `training=True` only when the layer is trainable and Keras calls it in training mode,
    like `hub.KerasLayer`. Needs the TensorFlow backend.

    Images: float32 in [0, 1], or uint8 / uint16 pixels, which the layer divides by 255 /
    65535 (`bit_tf.models.input_scale`); eager calls refuse float images whose largest value is
    above 1.5 (pixel values in 0-255) with a `ValueError`. Inside `fit` and other compiled graphs
    floats are not checked.

    Args:
        handle: a SavedModel folder, a local `.tar.gz`, or a tensorflow_hub handle such as
            "https://host/bit/m-r50x1/1.tar.gz".
        trainable: whether `fit` updates the module's variables.
        output_key: when the module returns a dict, the entry to output.

    Example:
        >>> inputs = keras.Input((128, 128, 3))
        >>> features = bit_tf.HubLayer("exports/bit_m-r50x1", trainable=True)(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(5)(features))
        >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(
        self,
        handle: str,
        trainable: bool = False,
        output_key: str | None = None,
        **kwargs,
    ):
        _require_tensorflow_backend("bit_tf.HubLayer")
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self.output_key = output_key
        self._module = _load(self.handle)
        if not callable(self._module):
            raise ValueError(
                f"Hub module {self.handle!r} has no __call__; HubLayer needs a Reusable "
                "SavedModel (TF2 hub module), such as those hub_export.export_module writes."
            )
        trainable_ids = {id(v) for v in getattr(self._module, "trainable_variables", [])}
        for variable in getattr(self._module, "variables", []):
            self._track_variable(
                keras.Variable(
                    initializer=variable,
                    trainable=id(variable) in trainable_ids,
                    dtype=variable.dtype,
                    shape=variable.shape,
                    name=variable.name.split(":")[0].replace("/", "_"),
                )
            )
        self.built = True

    def __call__(self, *args, **kwargs):
        input_scale.check_call_arguments(args, kwargs, f"HubLayer({self.handle!r})")
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None):
        training = bool(training) and self.trainable
        inputs = input_scale.to_unit_scale(inputs, "float32", f"HubLayer({self.handle!r})")
        outputs = self._module(inputs, training=training)
        if isinstance(outputs, dict):
            if self.output_key is None:
                if len(outputs) != 1:
                    raise ValueError(
                        f"Hub module {self.handle!r} returns {sorted(outputs)}; pass "
                        "output_key= to choose one."
                    )
                return next(iter(outputs.values()))
            return outputs[self.output_key]
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "handle": self.handle, "output_key": self.output_key}

    @classmethod
    def from_config(cls, config, safe_mode=None):
        # Like keras.layers.TFSMLayer: loading a model file must not silently fetch and run an
        # external SavedModel's graph.
        if safe_mode is None:
            safe_mode = _in_safe_mode()
        if safe_mode:
            raise ValueError(
                f"Refusing to load HubLayer({config.get('handle')!r}) from a saved model in "
                "safe mode: it runs an external SavedModel. If you trust it, call "
                "keras.saving.load_model(..., safe_mode=False)."
            )
        return cls(**config)


def _module_variables(module) -> list:
    """The `variables` of a Reusable SavedModel, else every variable the object tracks."""
    import tensorflow as tf

    variables = getattr(module, "variables", None)
    if variables:
        return list(variables)
    descendants = tf.train.TrackableView(module).descendants()
    return [item for item in descendants if isinstance(item, tf.Variable)]


def from_hub(handle: str, input_shape: tuple = (None, None, 3), name: str = "bit_from_hub"):
    """Rebuilds a native bit_tf Keras model from a BiT hub module, matching weights by name.

    Works for modules written by `hub_export.export_module` and for any module whose variables
    carry the official BiT checkpoint names (`resnet/root_block/standardized_conv2d/kernel`,
    ...). The architecture (depth, width, head) is read from the names and shapes. The result
    is an ordinary trainable `keras.Model` (pre-logits if the module has no head) that runs on
    every Keras backend once built.

    Raises:
        CheckpointError: the module's variables are not those of a BiT ResNetV2.

    Example:
        >>> model = bit_tf.from_hub("https://example.org/bit/m-r50x1/1.tar.gz")
        >>> model.output_shape
        (None, 2048)
    """
    module = _load(handle)
    # The module's variables by official name; their values are copied one at a time.
    sources = {official_name(variable.name): variable for variable in _module_variables(module)}
    shapes = {key: tuple(variable.shape) for key, variable in sources.items()}
    layout = describe_layout(shapes)
    model = resnet_v2(None, input_shape=input_shape, name=name, **layout)
    expected = official_variables(model)
    missing = sorted(set(expected) - set(sources))
    if missing:
        raise CheckpointError(
            f"Hub module {handle!r} lacks {len(missing)} BiT variable(s), e.g. {missing[:5]}."
        )
    for key, variable in expected.items():
        shape = shapes[key]
        if key == HEAD_KERNEL and len(shape) == 4:
            shape = shape[-2:]
        if shape != tuple(variable.shape):
            raise CheckpointError(
                f"Hub module {handle!r} variable {key} has shape {shapes[key]}, the rebuilt "
                f"model expects {tuple(variable.shape)}."
            )
    for key, variable in expected.items():
        value = np.asarray(sources[key].numpy(), dtype="float32")
        variable.assign(value.reshape(tuple(variable.shape)))
        del value
    return model
