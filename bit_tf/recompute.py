"""Pre-activations computed again in the backward pass instead of kept: less training memory.

In a pre-activation unit each GroupNorm+ReLU output feeds only convolutions, whose backward
pass needs it as well as the standardized kernel. Kept from the forward pass, these tensors
would live until the backward pass reaches them. Both are cheap to make again from what the
backward pass keeps anyway (GroupNorm's input, the kernels): one more pass of the native kernels
(`bit_tf.native`) over each. BiT-R50x1 at 128x128, batch 16, float32, on 2 CPU cores: the
training step's tensors peak at 390 instead of 616-646 MiB, and the step takes 4-9% longer.
A kernel is standardized again only where its convolution has enough output pixels in the batch
to hide the pass (`recomputes_kernel`); on smaller batches and images it is kept.

`activate_and_convolve` does this where the native kernels run (training on the CPU, traced
into a graph, e.g. by `fit`), with the same results; elsewhere (eager execution, XLA, GPUs,
inference) the units compose their layers as they are. `use_recomputation(False)` turns it off.

Example:
    >>> import tensorflow as tf
    >>> from bit_tf.layers import GroupNormalization, StandardizedConv2D
    >>> norm, conv = GroupNormalization(), StandardizedConv2D(8, 1)
    >>> norm.build((2, 4, 4, 32)); conv.build((2, 4, 4, 32))
    >>> @tf.function
    ... def step(x):
    ...     with tf.GradientTape() as tape:
    ...         tape.watch(x)
    ...         [y] = activate_and_convolve(norm, x, [conv])  # if recomputes(norm, x, [conv])
    ...     return tape.gradient(y, [x, conv.kernel])
    >>> [g.shape for g in step(tf.ones([2, 4, 4, 32]))]
    [TensorShape([2, 4, 4, 32]), TensorShape([1, 1, 32, 8])]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import keras
import tensorflow as tf

from bit_tf import fused, layers

_SETTING = {"enabled": True}


def use_recomputation(enabled: bool) -> bool:
    """Turns recomputing the pre-activations in training on (the default) or off; returns the
    old setting. Off, a training step keeps them: 4-9% faster on the CPU for R50x1 at 128x128,
    batch 16, for about 250 MiB more memory.

    Example:
        >>> previous = use_recomputation(False)
        >>> use_recomputation(previous)
        False
    """
    previous = _SETTING["enabled"]
    _SETTING["enabled"] = bool(enabled)
    return previous


@contextlib.contextmanager
def recomputation(enabled: bool) -> Iterator[None]:
    """`use_recomputation(enabled)` for the block inside; then the old setting again.

    Example:
        >>> with recomputation(False):
        ...     pass  # graphs traced here keep the pre-activations for the backward pass
    """
    previous = use_recomputation(enabled)
    try:
        yield
    finally:
        use_recomputation(previous)


def activate_and_convolve(norm, inputs, convolutions: Sequence) -> list:
    """`[conv(relu(norm(inputs))) for conv in convolutions]` (a 3x3 convolution with a stride
    after BiT's symmetric padding of 1), recomputing `relu(norm(inputs))` in the backward pass,
    and each standardized kernel where `recomputes_kernel` says so. For where
    `recomputes(norm, inputs, convolutions)` is True.

    Args:
        norm: the unit's `GroupNormalization`, built.
        inputs: the unit's tensor before its pre-activation.
        convolutions: built `StandardizedConv2D`s that take the pre-activation.

    Example:
        >>> from bit_tf.layers import GroupNormalization, StandardizedConv2D
        >>> norm, conv = GroupNormalization(), StandardizedConv2D(8, 3, strides=2)
        >>> norm.build((1, 6, 6, 32)); conv.build((1, 8, 8, 32))
        >>> @tf.function
        ... def step(x):
        ...     with tf.GradientTape() as tape:
        ...         tape.watch(x)
        ...         [y] = activate_and_convolve(norm, x, [conv])
        ...     return y, tape.gradient(y, x)
        >>> [t.shape for t in step(tf.ones([1, 6, 6, 32]))]
        [TensorShape([1, 3, 3, 8]), TensorShape([1, 6, 6, 32])]
    """
    gamma = tf.convert_to_tensor(norm.gamma)
    beta = tf.convert_to_tensor(norm.beta)

    def activate(inputs, gamma, beta):
        return norm._fused_call(fused, inputs, relu=True, gamma=gamma, beta=beta)

    def consumer(conv):
        kernel = tf.convert_to_tensor(conv.kernel)
        if not recomputes_kernel(conv, inputs.shape):
            standardized = conv.standardized_kernel(kernel)  # kept for the backward pass

            def convolve_kept(activated, standardized):
                return conv.convolve_standardized(
                    layers.pad_for_stride(conv, activated), standardized
                )

            return convolve_kept, (standardized,)

        def convolve(activated, kernel):
            return conv.convolution_op(layers.pad_for_stride(conv, activated), kernel)

        return convolve, (kernel,)

    return recomputed(activate, inputs, (gamma, beta), [consumer(conv) for conv in convolutions])


def recomputes(norm, inputs, convolutions: Sequence) -> bool:
    """Whether `activate_and_convolve` recomputes: turned on (`use_recomputation`), a
    `GroupNormalization` and bias-free `StandardizedConv2D`s without activation, traced into a
    graph where the native kernels run (`fused.native_operations`: a gradient tape records,
    no XLA, no GPU).

    Example:
        >>> from bit_tf.layers import GroupNormalization, StandardizedConv2D
        >>> recomputes(GroupNormalization(), tf.ones([1, 4, 4, 32]), [StandardizedConv2D(8, 1)])
        False
    """
    if not _SETTING["enabled"] or tf.executing_eagerly():
        return False
    if not isinstance(norm, layers.GroupNormalization) or norm._fusable(inputs) is not fused:
        return False
    for conv in convolutions:
        if not isinstance(conv, layers.StandardizedConv2D) or conv.use_bias:
            return False
        if conv.activation is not keras.activations.linear:
            return False
    return fused.native_operations(inputs.dtype) is not None


# Standardizing a kernel again costs a pass over it whatever the batch; the convolution's own
# work grows with the output pixels of the batch. Below this many, the kernel is kept.
KERNEL_RECOMPUTATION_MIN_PIXELS = 256


def recomputes_kernel(conv, input_shape) -> bool:
    """Whether `activate_and_convolve` standardizes `conv`'s kernel again in the backward pass
    rather than keeping it: where the batch's output pixels are at least
    `KERNEL_RECOMPUTATION_MIN_PIXELS`, or not known when traced.

    BiT-R50x1 at 128x128, batch 16, has 256 output pixels in its last block (all its kernels
    are recomputed: 95 MiB less); the README's main job (R26x1 at 32x32, batch 32) has 128 and
    32 in its last two, whose kernels are most of its weights, so it keeps them (its step is
    12% slower recomputing all).

    Example:
        >>> from bit_tf.layers import StandardizedConv2D
        >>> recomputes_kernel(StandardizedConv2D(8, 3, strides=2), (16, 10, 10, 32))
        True
        >>> recomputes_kernel(StandardizedConv2D(8, 1), (4, 2, 2, 32))
        False
    """
    batch, height, width = input_shape[:3]
    if batch is None or height is None or width is None:
        return True
    stride = conv.strides[0]  # BiT's convolutions all give ceil(size / stride) pixels a side
    pixels = -(-int(height) // stride) * -(-int(width) // stride)
    return int(batch) * pixels >= KERNEL_RECOMPUTATION_MIN_PIXELS


def recomputed(
    activate: Callable,
    inputs,
    activation_parameters: Sequence,
    consumers: Sequence[tuple[Callable, Sequence]],
) -> list:
    """`[consume(activate(inputs, *activation_parameters), *parameters) for consume, parameters
    in consumers]`, whose backward pass keeps only the arguments and computes the activation
    (and whatever else the consumers compute from their parameters) again.

    Only for graphs: there the consumers' forward outputs, traced again for their gradients,
    have no use and are pruned, so only their backward passes run. Unlike
    `tf.recompute_grad`, which runs the whole forward pass again.

    Example:
        >>> @tf.function
        ... def step(x, w):
        ...     with tf.GradientTape() as tape:
        ...         tape.watch(x)
        ...         [y] = recomputed(lambda x: tf.nn.relu(x), x, (), [(tf.matmul, (w,))])
        ...     return tape.gradient(y, x)
        >>> step(tf.ones([2, 3]), tf.ones([3, 4])).shape
        TensorShape([2, 3])
    """
    activation_count = len(activation_parameters)
    sizes = [len(parameters) for _, parameters in consumers]
    flat = [inputs, *activation_parameters, *(p for _, parameters in consumers for p in parameters)]

    def forward_pass(flat):
        activated = activate(flat[0], *flat[1 : 1 + activation_count])
        outputs, start = [], 1 + activation_count
        for (consume, _), size in zip(consumers, sizes, strict=True):
            outputs.append(consume(activated, *flat[start : start + size]))
            start += size
        return outputs

    @tf.custom_gradient
    def run(*flat):
        outputs = forward_pass(flat)

        def gradient(*upstream):
            # The recomputation waits for the upstream gradients, which also keeps graph
            # optimizations from merging it with the forward pass's (identical) ops.
            with tf.control_dependencies([up for up in upstream if up is not None]):
                arguments = [tf.identity(argument) for argument in flat]
            with tf.GradientTape() as tape:
                tape.watch(arguments)
                again = forward_pass(arguments)
            pairs = [(out, up) for out, up in zip(again, upstream, strict=True) if up is not None]
            return tape.gradient(
                [out for out, _ in pairs], arguments, output_gradients=[up for _, up in pairs]
            )

        return outputs, gradient

    return list(run(*flat))
