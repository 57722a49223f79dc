"""The builder's normalization options give the layers asked for; the default stays BiT's."""

import inspect

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf.models.layers import (
    BatchNormalizationReLU,
    Conv2D,
    GroupNormalization,
    NoisyBatchNormalizationReLU,
    PreActBasic,
    PreActBottleneck,
    StandardizedConv2D,
)
from bit_tf.models.noisy_batch_norm import NoisyBatchNormalization
from bit_tf.models.weights import load_official_weights

NORM_TYPES = {
    "group": GroupNormalization,
    "batch": keras.layers.BatchNormalization,
    "noisy_batch": NoisyBatchNormalization,
}
# A unit's pre-activations: the normalization, then ReLU ("none": the ReLU alone).
PREACTIVATION_TYPES = {
    "group": GroupNormalization,
    "batch": BatchNormalizationReLU,
    "noisy_batch": NoisyBatchNormalizationReLU,
    "none": keras.layers.ReLU,
}


def _layer_types(model):
    """(normalization types, convolution types) of every sub-layer, by exact class."""
    norms, convs = [], []
    for layer in model.layers:
        units = [layer] if isinstance(layer, PreActBasic | PreActBottleneck) else []
        for unit in units:
            for name in ("norm_a", "norm_b", "norm_c"):
                if hasattr(unit, name):
                    norms.append(type(getattr(unit, name)))
            for name in ("conv_a", "conv_b", "conv_c", "projection"):
                if getattr(unit, name, None) is not None:
                    convs.append(type(getattr(unit, name)))
        if isinstance(layer, keras.layers.BatchNormalization | keras.layers.GroupNormalization):
            norms.append(type(layer))
        if isinstance(layer, keras.layers.Conv2D):
            convs.append(type(layer))
    return norms, convs


@pytest.mark.parametrize("normalization", ["group", "batch", "noisy_batch", "none"])
@pytest.mark.parametrize("weight_standardization", [True, False])
def test_options_give_the_layer_types_asked_for(normalization, weight_standardization):
    model = bit_tf.resnet_v2(
        units_per_block=(1, 1, 1, 1),
        unit="basic",
        num_classes=4,
        normalization=normalization,
        weight_standardization=weight_standardization,
    )
    norms, convs = _layer_types(model)
    expected_conv = StandardizedConv2D if weight_standardization else Conv2D
    # Stem, 2 convs per unit, 3 projections.
    assert convs == [expected_conv] * 12
    # Two pre-activations per unit, then the pre-head norm (none for "none"); exact classes,
    # so BatchNorm is not noisy.
    head = [] if normalization == "none" else [NORM_TYPES[normalization]]
    assert norms == [PREACTIVATION_TYPES[normalization]] * 8 + head
    outputs = model(np.zeros((2, 32, 32, 3), "float32"), training=True)
    assert outputs.shape == (2, 4)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="'layer'.*group"):
        bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), normalization="layer")


def test_default_is_group_norm_with_weight_standardization_and_matches_the_reference(
    official_checkpoint, reference_outputs
):
    parameters = inspect.signature(bit_tf.resnet_v2).parameters
    assert parameters["normalization"].default == "group"
    assert parameters["weight_standardization"].default is True

    default = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    explicit = bit_tf.resnet_v2(
        units_per_block=(1, 1, 1, 1),
        num_classes=10,
        normalization="group",
        weight_standardization=True,
    )
    assert _layer_types(default) == _layer_types(explicit)
    assert set(_layer_types(default)[0]) == {GroupNormalization}
    assert set(_layer_types(default)[1]) == {StandardizedConv2D}

    load_official_weights(default, official_checkpoint)
    logits = keras.ops.convert_to_numpy(default(reference_outputs["images"], training=False))
    np.testing.assert_allclose(logits, reference_outputs["logits"], atol=1e-4, rtol=1e-4)
