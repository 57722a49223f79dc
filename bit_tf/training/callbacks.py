"""The Keras callbacks of a training run: its checkpointer, the caller's, and TensorBoard's.

Example:
    >>> callbacks = run_callbacks(Checkpointer(run), config.callbacks, logdir="runs/pets/logs")
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import keras

__all__ = ["run_callbacks"]


def run_callbacks(
    checkpointer: keras.callbacks.Callback,
    callbacks: Sequence[keras.callbacks.Callback] | None,
    logdir: str | None,
) -> list[keras.callbacks.Callback]:
    """The checkpointer first, then the caller's callbacks, then TensorBoard's for `logdir`.

    Raises:
        ValueError: a `logdir` without the tensorboard package installed.

    Example:
        >>> [type(c).__name__ for c in run_callbacks(Checkpointer(run), None, "logs")]
        ['Checkpointer', 'TensorBoard']
    """
    all_callbacks = [checkpointer, *(callbacks or [])]
    if logdir:
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                f"logdir={logdir!r} asks for TensorBoard logs, but the tensorboard package is "
                "not installed: pip install tensorboard, or pass logdir=None."
            )
        all_callbacks.append(keras.callbacks.TensorBoard(logdir, update_freq="epoch"))
    return all_callbacks
