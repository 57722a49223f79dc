"""`FusedMomentumSGD`: Keras' SGD with momentum, one fused kernel per variable on TensorFlow.

Keras' `SGD.update_step` updates each variable with four TensorFlow ops (two multiplies, a
subtract into the momentum, an add into the variable), each a pass over memory. TensorFlow's
`ResourceApplyKerasMomentum` does the same update, `m = momentum * m - lr * g; w += m`, in one
pass. Nesterov momentum is the same op's `use_nesterov` (Keras' formula:
`w += momentum * m - lr * g` after the momentum update). Other backends, zero momentum and
sparse gradients take Keras' own update.

Example:
    >>> from bit_tf.training.optimizers import FusedMomentumSGD
    >>> model.compile(optimizer=FusedMomentumSGD(learning_rate=0.003, momentum=0.9), loss="mse")
"""

from __future__ import annotations

import keras


def _resource_handle(variable):
    """The resource handle of a tf.Variable, or of the tf.Variable a Keras variable wraps."""
    if hasattr(variable, "handle"):
        return variable.handle
    return variable.value.handle


@keras.saving.register_keras_serializable(package="bit_tf")
class FusedMomentumSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one fused op per variable on TensorFlow.

    Same arguments, same results (to float32 round-off) and same saved state as Keras' SGD;
    `bit_tf.finetune` and `bit_tf.pretrain` use it.

    Example:
        >>> optimizer = FusedMomentumSGD(learning_rate=0.01, momentum=0.9)
        >>> model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        momentum = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=_resource_handle(variable),
            accum=_resource_handle(momentum),
            lr=tf.cast(learning_rate, variable.dtype),
            grad=tf.cast(gradient, variable.dtype),
            momentum=tf.cast(self.momentum, variable.dtype),
            use_locking=False,
            use_nesterov=bool(self.nesterov),
        )
