"""Pre-activations made again in the backward pass instead of kept: less training memory.

In a pre-activation unit each GroupNorm+ReLU output feeds only convolutions, whose backward
pass needs it (for the filter gradient) as well as the standardized kernel. Kept from the
forward pass, these tensors live until the backward pass reaches them. Both are cheap to make
again from what the backward pass keeps anyway (GroupNorm's input, the kernels).

The TensorFlow kernels do this where the C++ kernels run a training step traced into a graph:
`group_norm` remembers each pre-activation it makes with the recipe to make it again
(`remember`); a standardized convolution whose input is one of them, directly or after zero
padding (`source_of`), runs as `recomputed_convolution`: the forward pass convolves the
pre-activation already made, and the backward pass keeps only the recipe's inputs and computes
the pre-activation (and, for convolutions with many output pixels, the standardized kernel)
again. The gradients are the same.

Example:
    >>> import tensorflow as tf
    >>> @tf.function
    ... def step(x, kernel):
    ...     with tf.GradientTape() as tape:
    ...         tape.watch(x)
    ...         activated = tf.nn.relu(x)
    ...         remember(activated, tf.nn.relu, (x,))
    ...         y = recomputed_convolution(source_of(activated), activated, kernel,
    ...                                    standardize=lambda k: k,
    ...                                    convolve=lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"),
    ...                                    recompute_kernel=False)
    ...     return tape.gradient(y, x)
    >>> step(tf.ones([1, 4, 4, 8]), tf.ones([1, 1, 8, 2])).shape
    TensorShape([1, 4, 4, 8])
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

import tensorflow as tf

# A pre-activation is consumed by the convolutions of the same unit, right after it is made:
# a few recent ones are all that need remembering (and all that is kept alive).
_REMEMBERED = 8
_STATE = threading.local()

# Standardizing a kernel again costs a pass over it whatever the batch; the convolution's own
# work grows with the output pixels of the batch. Below this many, the kernel is kept.
KERNEL_RECOMPUTATION_MIN_PIXELS = 256

Source = collections.namedtuple("Source", ["activation", "arguments", "paddings"])


def _recent() -> collections.deque:
    if not hasattr(_STATE, "recent"):
        _STATE.recent = collections.deque(maxlen=_REMEMBERED)
    return _STATE.recent


def remember(activated, activation: Callable, arguments: Sequence) -> None:
    """Notes that `activated` is `activation(*arguments)`, to be made again where needed.

    Example:
        >>> remember(y, functools.partial(group_norm, groups=32, epsilon=1e-5, relu=True),
        ...          (x, gamma, beta))  # doctest: +SKIP
    """
    _recent().append((activated.ref(), activation, tuple(arguments)))


def _zero_padding(tensor):
    """(input, paddings) when `tensor` is the output of a constant zero padding, else None."""
    operation = getattr(tensor, "op", None)
    if operation is None or operation.type not in ("Pad", "PadV2"):
        return None
    if operation.type == "PadV2" and tf.get_static_value(operation.inputs[2]) != 0:
        return None
    paddings = tf.get_static_value(operation.inputs[1])
    return None if paddings is None else (operation.inputs[0], paddings.tolist())


def source_of(tensor) -> Source | None:
    """How to make `tensor` again: a remembered pre-activation, or one zero-padded; else None.

    Example:
        >>> source_of(tf.ones([1])) is None
        True
    """
    candidates = [(tensor, None)]
    padded = _zero_padding(tensor)
    if padded is not None:
        candidates.append(padded)
    for candidate, paddings in candidates:
        reference = candidate.ref()
        for remembered, activation, arguments in reversed(_recent()):
            if remembered == reference:
                return Source(activation, arguments, paddings)
    return None


def recomputes_kernel(batch: int | None, output_pixels: int | None) -> bool:
    """Whether a convolution's standardized kernel is made again in the backward pass rather
    than kept: where its batch has at least `KERNEL_RECOMPUTATION_MIN_PIXELS` output pixels
    (`batch` examples of `output_pixels` each), or the count is not known when traced.

    Example:
        >>> recomputes_kernel(16, 4 * 4), recomputes_kernel(32, 2 * 2), recomputes_kernel(None, 4)
        (True, False, True)
    """
    if batch is None or output_pixels is None:
        return True
    return int(batch) * int(output_pixels) >= KERNEL_RECOMPUTATION_MIN_PIXELS


def recomputed_convolution(
    source: Source,
    activated,
    kernel,
    *,
    standardize: Callable,
    convolve: Callable,
    recompute_kernel: bool,
):
    """`convolve(activated, standardize(kernel))`, whose backward pass keeps only the
    arguments of `source` and the kernel (or, unless `recompute_kernel`, the standardized
    kernel), and makes the pre-activation `activated` again from them.

    Only for graphs: there the convolution traced again for its gradient has no use for its
    output, which is pruned, so only its backward pass runs (unlike `tf.recompute_grad`, which
    runs the whole forward pass again).

    Example:
        See the module's example.
    """
    weight = kernel if recompute_kernel else standardize(kernel)

    def convolve_weight(activated, weight):
        return convolve(activated, standardize(weight) if recompute_kernel else weight)

    def activate(arguments):
        activated = source.activation(*arguments)
        if source.paddings is not None:
            activated = tf.pad(activated, source.paddings)
        return activated

    @tf.custom_gradient
    def run(*flat):
        outputs = convolve_weight(activated, flat[-1])  # the pre-activation already made

        def gradient(upstream):
            # The recomputation waits for the upstream gradient, which also keeps graph
            # optimizations from merging it with the forward pass's (identical) ops.
            with tf.control_dependencies([upstream]):
                copies = [tf.identity(argument) for argument in flat]
            with tf.GradientTape() as tape:
                tape.watch(copies)
                again = convolve_weight(activate(copies[:-1]), copies[-1])
            return tape.gradient(again, copies, output_gradients=upstream)

        return outputs, gradient

    return run(*source.arguments, weight)
