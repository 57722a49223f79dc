"""What the graph being traced is for, as its caller declares it; `bit_tf.kernels` chooses by it.

Most traces need no declaration. Two callers know more than the kernels can see:

- `exporting(trainable)`: the graph is saved (a SavedModel, a TF-Hub module) and loaded
  elsewhere, so it may hold only standard TensorFlow ops; a trainable export is differentiated
  by whoever loads it, so it holds plain differentiable ops (the keras.ops reference).
- `local_inference()`: the graph runs in this process only and is never saved (`BitModel`'s
  predict step), so the C++ kernels may serve it although no gradient tape records.

Example:
    >>> from bit_tf import kernels
    >>> with kernels.exporting(trainable=False):
    ...     kernels.purpose()
    'export'
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

TRAINABLE_EXPORT = "trainable_export"
EXPORT = "export"
LOCAL_INFERENCE = "local_inference"

_STATE = threading.local()


def purpose() -> str | None:
    """The declared purpose of what is traced now on this thread, or None.

    Example:
        >>> purpose() is None
        True
    """
    return getattr(_STATE, "purpose", None)


@contextlib.contextmanager
def _declared(value: str) -> Iterator[None]:
    previous = purpose()
    _STATE.purpose = value
    try:
        yield
    finally:
        _STATE.purpose = previous


def exporting(trainable: bool) -> contextlib.AbstractContextManager:
    """Declares that graphs traced inside are saved for use elsewhere: standard ops only, and
    plain differentiable ones where `trainable`.

    Example:
        >>> with exporting(trainable=True):
        ...     purpose()
        'trainable_export'
    """
    return _declared(TRAINABLE_EXPORT if trainable else EXPORT)


def local_inference() -> contextlib.AbstractContextManager:
    """Declares that graphs traced inside run in this process only, for inference.

    Example:
        >>> with local_inference():
        ...     purpose()
        'local_inference'
    """
    return _declared(LOCAL_INFERENCE)
