"""The Keras model itself, traced over `tf.Variable`s named by the official checkpoint keys.

Exports hold the graph of the Keras model's own forward pass: `OfficialForward(model)` keeps
one `tf.Variable` per official key (`resnet/block1/unit01/a/standardized_conv2d/kernel`, ...),
as the published BiT TF-Hub modules name them, and runs the model with those variables in
place of its own (`keras.StatelessScope`). A loaded export so needs neither Keras nor bit_tf,
and `bit_tf.from_hub` reads the architecture back from the names. The trace is declared
`bit_tf.kernels.exporting(...)`, so it holds standard TensorFlow ops only.

Example:
    >>> forward = OfficialForward(model, trainable=True)
    >>> forward.weights["resnet/group_norm/gamma"].name
    'resnet/group_norm/gamma:0'
    >>> logits = tf.function(forward)(images)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bit_tf import kernels
from bit_tf.models.input_scale import integer_scale
from bit_tf.models.weights import HEAD_KERNEL, describe_layout, official_variables


def _run_with(model: keras.Model, keras_variables: dict, weights: dict, trainable: bool):
    """The function `OfficialForward` calls: the model on images, over `weights`."""

    def forward(images):
        mapping = [
            (variable, weights[key])
            for key, variable in keras_variables.items()
            if key != HEAD_KERNEL
        ]
        if HEAD_KERNEL in keras_variables:  # (1, 1, F, C) in the official layout -> (F, C)
            head = keras_variables[HEAD_KERNEL]
            mapping.append((head, tf.reshape(weights[HEAD_KERNEL], head.shape)))
        with keras.StatelessScope(state_mapping=mapping), kernels.exporting(trainable):
            return model(images, training=False)

    return forward


def unit_scale_images(images, where: str = "a BiT export") -> tf.Tensor:
    """`images` as float32 in [0, 1]: uint8 / uint16 pixels divided by 255 / 65535, floats cast
    (`bit_tf.models.input_scale`). Decided by the dtype, so it holds in every traced signature.

    Raises:
        ValueError: images of another integer dtype, naming it.

    Example:
        >>> unit_scale_images(tf.constant([[0, 51, 255]], tf.uint8)).numpy()
        array([[0. , 0.2, 1. ]], dtype=float32)
    """
    images = tf.convert_to_tensor(images)
    scale = integer_scale(images.dtype.name, where)
    images = tf.cast(images, tf.float32)
    return images if scale is None else images / scale


def official_shape(key: str, variable) -> tuple[int, ...]:
    """The shape of a model variable in the official layout: the head kernel as a (1, 1,
    features, classes) convolution, the others as they are.

    Example:
        >>> official_shape(HEAD_KERNEL, model.get_layer("head").kernel)
        (1, 1, 2048, 1000)
    """
    shape = tuple(variable.shape)
    return (1, 1, *shape) if key == HEAD_KERNEL else shape


class OfficialForward(tf.Module):
    """A bit_tf model's forward pass over `tf.Variable`s named by the official keys.

    Args:
        model: a bit_tf model (`create_model`, `resnet_v2`, `finetune`, a folded copy); every
            weight must have an official key.
        trainable: whether the variables are trainable (False for serving exports).

    Raises:
        ValueError: the model has weights without an official key, naming some.

    Example:
        >>> forward = OfficialForward(bit_tf.create_model("BiT-S-R50x1"), trainable=False)
        >>> forward.layout["num_classes"], forward.has_head
        (1000, True)
    """

    def __init__(self, model: keras.Model, trainable: bool = True):
        super().__init__(name=None)
        keras_variables = official_variables(model)
        named = {id(variable) for variable in keras_variables.values()}
        unnamed = [variable.path for variable in model.weights if id(variable) not in named]
        if unnamed:
            raise ValueError(
                f"Model {model.name!r} has weights without an official BiT key ({unnamed[:3]}); "
                "export models built by bit_tf (create_model, resnet_v2, finetune)."
            )
        shapes = {key: official_shape(key, variable) for key, variable in keras_variables.items()}
        self.layout = describe_layout(shapes)
        self.has_head = HEAD_KERNEL in shapes
        # One variable at a time, straight from the model's: no copy of all the weights besides
        # the model and these variables.
        self.weights = {
            key: tf.Variable(
                tf.reshape(tf.cast(keras_variables[key].value, tf.float32), shapes[key]),
                name=key,
                trainable=trainable and keras_variables[key].trainable,
            )
            for key in sorted(shapes)
        }
        # A closure, so that the Keras model is not tracked (and saved) with the variables.
        self._forward = _run_with(model, keras_variables, self.weights, trainable)

    def __call__(self, images):
        """The model's outputs for float images in [0, 1], or uint8 / uint16 pixels."""
        return self._forward(unit_scale_images(images))
