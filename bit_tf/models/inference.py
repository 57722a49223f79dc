"""An inference copy of a BiT model with weight standardization folded into plain kernels.

A BiT model standardizes every convolution kernel at every call, because training changes the
kernels. For inference they stay fixed, so the standardization can be done once:
`fold_weight_standardization(model)` returns a copy of the model whose convolutions are plain
`bit_tf.models.layers.Conv2D`s holding the standardized kernels. It computes the same function (the
same float32 kernels reach the convolutions) without standardizing 23.5M weights (R50x1) at
every call. The serving exports of `hub_export` use it.

The copy is for inference: it does not follow later changes of the original's weights (fold
again after training), and training it would train kernels without weight standardization.

Example:
    >>> import bit_tf
    >>> model = bit_tf.create_model("BiT-M-R50x1", weights="BiT-M-R50x1")
    >>> fast = bit_tf.models.inference.fold_weight_standardization(model)
    >>> probabilities = keras.ops.softmax(fast.predict(images, batch_size=16))
"""

from __future__ import annotations

import keras

from bit_tf.models.layers import StandardizedConv2D, convolutions


def _without_standardization(config):
    """The config with every StandardizedConv2D a Conv2D and every unit's
    `weight_standardization` off, at any depth of nesting."""
    if isinstance(config, list):
        return [_without_standardization(item) for item in config]
    if not isinstance(config, dict):
        return config
    config = {key: _without_standardization(value) for key, value in config.items()}
    if config.get("class_name") == "StandardizedConv2D" and isinstance(config.get("config"), dict):
        layer_config = {key: value for key, value in config["config"].items() if key != "epsilon"}
        return {
            **config,
            "module": "bit_tf.models.layers",
            "class_name": "Conv2D",
            "registered_name": "bit_tf>Conv2D",
            "config": layer_config,
        }
    if "weight_standardization" in config:
        config["weight_standardization"] = False
    return config


def _functional_config(model) -> dict:
    """The serialized config of a functional model; a clear error otherwise."""
    config = None
    if isinstance(model, keras.Model):
        try:
            config = keras.saving.serialize_keras_object(model)
        except NotImplementedError:
            config = None
    if not isinstance(config, dict) or "input_layers" not in config.get("config", {}):
        raise ValueError(
            "fold_weight_standardization needs a functional Keras model (as create_model, "
            f"resnet_v2 and finetune return), got {type(model).__name__}."
        )
    return config


def fold_weight_standardization(model: keras.Model) -> keras.Model:
    """A copy of `model` with plain convolutions holding its standardized kernels.

    Args:
        model: a functional Keras model built from bit_tf's layers (`create_model`,
            `resnet_v2`, `finetune`, or a `.keras` file of them), built on its inputs.

    Returns:
        A model of the same class, layer names, inputs and outputs, computing the same
        function; models without weight standardization come back as an equal copy.

    Raises:
        ValueError: `model` is not a functional model (its layers cannot be rebuilt from
            its config), naming its type.

    Example:
        >>> folded = fold_weight_standardization(bit_tf.create_model("BiT-S-R50x1"))
        >>> any(isinstance(conv, bit_tf.StandardizedConv2D) for conv in convolutions(folded))
        False
    """
    config = _functional_config(model)
    standardized = {
        layer.kernel.path: keras.ops.convert_to_numpy(layer.standardized_kernel())
        for layer in convolutions(model)
        if isinstance(layer, StandardizedConv2D)
    }
    config = _without_standardization(config)
    folded = keras.saving.deserialize_keras_object(config)
    source = {variable.path: variable for variable in model.weights}
    unmatched = {variable.path for variable in folded.weights} ^ set(source)
    if unmatched or len(folded.weights) != len(source):
        raise ValueError(
            f"Folding {model.name!r}: the rebuilt model's variables differ from the original's "
            f"({sorted(unmatched)[:3]}); is it a bit_tf model?"
        )
    for variable in folded.weights:
        value = standardized.get(variable.path)
        if value is None:  # a copy: on JAX, arrays shared between models can be donated
            value = keras.ops.convert_to_numpy(source[variable.path].value)
        variable.assign(value)
    return folded
