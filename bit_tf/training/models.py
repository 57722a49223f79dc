"""The model side every recipe shares: the dtype policy, a new zero head, a copy for a strategy.

Example:
    >>> policy = dtype_policy_for("BiT-M-R50x1", "mixed_bfloat16")
    >>> backbone = bit_tf.create_model("BiT-M-R50x1", num_classes=None, dtype=policy)
    >>> model = with_new_head(backbone, num_classes=5, class_names=("a", "b", "c", "d", "e"))
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from bit_tf.models.bit_model import BitModel
from bit_tf.models.resnet_v2 import resolve_dtype_policy

__all__ = ["copied", "dtype_policy_for", "model_policy", "with_new_head"]


def dtype_policy_for(
    model_or_name: str | keras.Model, dtype, role: str = "model"
) -> keras.DTypePolicy | None:
    """The policy to build a named model with; None for a model passed in (it keeps its own).

    Raises:
        ValueError: a `dtype` given with a model rather than a name (`role` names which).

    Example:
        >>> dtype_policy_for("BiT-S-R50x1", "mixed_bfloat16").compute_dtype
        'bfloat16'
    """
    if dtype is not None and not isinstance(model_or_name, str):
        raise ValueError(
            f"dtype={dtype!r} applies to a {role} name; build the {role} with "
            "bit_tf.create_model(..., dtype=...) instead."
        )
    return resolve_dtype_policy(dtype) if isinstance(model_or_name, str) else None


def model_policy(model: keras.Model) -> keras.DTypePolicy:
    """The dtype policy a model computes in: its stem convolution's, else its last layer's.

    Example:
        >>> model_policy(bit_tf.create_model("BiT-S-R50x1")).name
        'float32'
    """
    try:
        return model.get_layer("root_conv").dtype_policy
    except ValueError:
        return model.layers[-1].dtype_policy


def copied(model: keras.Model) -> keras.Model:
    """A copy of `model` with its weights, built in the current `tf.distribute` scope.

    Example:
        >>> with strategy.scope():
        ...     replica_model = copied(model)
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def with_new_head(
    model: keras.Model, num_classes: int, class_names: Sequence[str] | None = None
) -> keras.Model:
    """`model` up to its pre-logits with a new zero head, as a BitModel that keeps the names.

    Raises:
        ValueError: the model has no 'pre_logits' layer and does not end in a vector.

    Example:
        >>> with_new_head(backbone, 5).output_shape
        (None, 5)
    """
    try:
        features = model.get_layer("pre_logits").output
    except ValueError:
        features = model.outputs[0]
        if len(features.shape) != 2:
            raise ValueError(
                f"Model {model.name!r} has no 'pre_logits' layer and its output has shape "
                f"{features.shape}, not (batch, features); pass a bit_tf model or a feature "
                "extractor whose output is a vector per image."
            ) from None
    # Float32 logits for a mixed-precision backbone (its variable dtype), as Keras advises.
    head = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        name="head",
        dtype=model_policy(model).variable_dtype,
    )(features)
    # A single input stays a single tensor (not a list), so `model(images)` matches its structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return BitModel(inputs, head, name=model.name, class_names=class_names)
