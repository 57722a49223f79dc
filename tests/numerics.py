"""How the tests compare float32 model outputs: the relative error and the bounds it must meet.

Example:
    >>> from numerics import SAME_MODEL_TOLERANCE, relative_error
    >>> assert relative_error(layer(images), model(images)) < SAME_MODEL_TOLERANCE
"""

import keras
import numpy as np

# Against the authors' reference outputs. ../shared/fixtures/README says an exact BiT reproduces
# them "to about 1e-5" in float32; the bound leaves room for other backends' kernels.
PARITY_TOLERANCE = 1e-4

# Between two of this package's own float32 paths through one model (an eager Keras call
# against a SavedModel graph, the hub layer or a published module). Each path is an exact BiT,
# about 1e-5 from the reference, and TensorFlow's oneDNN kernels accumulate in another order
# in a graph than in an eager call (measured: up to 1.06e-5 between the hub layer and the
# model), so two of them may differ by up to twice that.
SAME_MODEL_TOLERANCE = 2e-5


def relative_error(actual, expected) -> float:
    """Max abs difference over max abs expected value, as the fixtures' README defines it."""
    actual = np.asarray(keras.ops.convert_to_numpy(actual), dtype=np.float64)
    expected = np.asarray(keras.ops.convert_to_numpy(expected), dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
