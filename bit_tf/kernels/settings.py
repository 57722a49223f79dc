"""The switches of `bit_tf.kernels`, in one object, each with its environment variable.

- `fused` (`BIT_TF_FUSED_KERNELS`): fused GroupNorm(+ReLU) and weight standardization with
  closed-form gradients, and on TensorFlow convolutions on very few output pixels as matrix
  products; off, the keras.ops reference runs.
- `native` (`BIT_TF_NATIVE_KERNELS`): the C++ kernels (`bit_tf.kernels.native`) for
  TensorFlow on CPUs.
- `recompute` (`BIT_TF_RECOMPUTE`): pre-activations made again in the backward pass of CPU
  training on the C++ kernels.

All are on by default; setting a variable to 0 turns its switch off. The settings apply to
graphs traced afterwards: a model whose step is already traced keeps what it was traced with.

Example:
    >>> from bit_tf import kernels
    >>> kernels.settings()
    KernelSettings(fused=True, native=True, recompute=True)
    >>> with kernels.configured(recompute=False):
    ...     kernels.settings().recompute
    False
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

ENVIRONMENT_VARIABLES = {
    "fused": "BIT_TF_FUSED_KERNELS",
    "native": "BIT_TF_NATIVE_KERNELS",
    "recompute": "BIT_TF_RECOMPUTE",
}


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """Which kernels `bit_tf.kernels` may choose; each one falls back to the next plainer one.

    Attributes:
        fused: fused kernels with closed-form gradients (else the keras.ops reference).
        native: the C++ kernels on TensorFlow CPUs (else the fused ones); needs `fused`.
        recompute: recompute pre-activations in the backward pass where the C++ kernels run.

    Example:
        >>> KernelSettings(native=False).fused
        True
    """

    fused: bool = True
    native: bool = True
    recompute: bool = True


def _from_environment() -> KernelSettings:
    values = {
        name: os.environ.get(variable, "1").strip() not in ("0", "false", "False", "off")
        for name, variable in ENVIRONMENT_VARIABLES.items()
    }
    return KernelSettings(**values)


_CURRENT = [_from_environment()]


def settings() -> KernelSettings:
    """The settings in force now.

    Example:
        >>> settings().fused in (True, False)
        True
    """
    return _CURRENT[0]


def configure(**changes: bool) -> KernelSettings:
    """Changes some switches (`fused`, `native`, `recompute`); returns the previous settings.

    Raises:
        TypeError: an unknown switch, naming it.

    Example:
        >>> previous = configure(native=False)  # the XLA-fused kernels from the next trace
        >>> _ = configure(**dataclasses.asdict(previous))
    """
    unknown = sorted(set(changes) - set(ENVIRONMENT_VARIABLES))
    if unknown:
        raise TypeError(
            f"Unknown kernel setting(s) {unknown}; "
            f"the settings are {sorted(ENVIRONMENT_VARIABLES)}."
        )
    previous = _CURRENT[0]
    _CURRENT[0] = dataclasses.replace(previous, **{k: bool(v) for k, v in changes.items()})
    return previous


@contextlib.contextmanager
def configured(**changes: bool) -> Iterator[KernelSettings]:
    """`configure(**changes)` for the block inside, then the previous settings again.

    Example:
        >>> with configured(fused=False) as current:  # the keras.ops reference only
        ...     current.fused
        False
    """
    previous = configure(**changes)
    try:
        yield settings()
    finally:
        _CURRENT[0] = previous
