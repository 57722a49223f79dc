"""What defines a training run, and the refusal to mix two runs in one folder.

A run records its settings (model, dataset identity, steps, batch size, resolution, seed, ...)
in its `progress.json`. Starting a run in a folder that holds one with other settings would
silently retrain over it, or resume it on other data; `check_same_run` refuses that with a
`RunSettingsError` that names each difference and the ways out.

Example:
    >>> check_same_run("runs/pets", {"steps": 300, "seed": 0}, {"steps": 50, "seed": 0})
    Traceback (most recent call last):
    RunSettingsError: runs/pets holds a run with other settings (steps: 300, now 50). To ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Longer lists (class names) are described by their length and first difference.
_SHORT_LIST = 4


class RunSettingsError(ValueError):
    """A folder holds a run whose settings differ from the run being started.

    Example:
        >>> try:
        ...     bit_tf.finetune("BiT-M-R50x1", train, checkpoint_dir="runs/pets", steps=50)
        ... except RunSettingsError as error:
        ...     print(error)  # the differences, and overwrite=True or another folder
    """


def differences(found: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Each setting that differs between `found` and `wanted`, as "name: old, now new".

    Example:
        >>> differences({"steps": 300, "seed": 0}, {"steps": 50, "seed": 0})
        ['steps: 300, now 50']
        >>> differences({"dataset": {"name": "a"}}, {"dataset": {"name": "b"}})
        ["dataset name: 'a', now 'b'"]
    """
    found_list = []
    for key in sorted(set(found) | set(wanted), key=str):
        old, new = found.get(key, _MISSING), wanted.get(key, _MISSING)
        if old == new:
            continue
        name = f"{prefix}{key}"
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            found_list.extend(differences(old, new, prefix=f"{name} "))
        else:
            found_list.append(f"{name}: {_describe(old, new)}")
    return found_list


def check_same_run(folder: str, found: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raises `RunSettingsError` unless the run in `folder` (settings `found`) is the run
    `wanted`.

    Args:
        folder: the run's folder, named in the message.
        found: the settings recorded there.
        wanted: the settings of the run being started.

    Example:
        >>> check_same_run("runs/pets", progress["settings"], settings)
    """
    changed = differences(found, wanted)
    if changed:
        raise RunSettingsError(
            f"{folder} holds a run with other settings ({'; '.join(changed)}). To start again "
            "there, pass overwrite=True (the commands' --overwrite); to keep it, use another "
            "folder."
        )


class _Missing:
    def __repr__(self) -> str:
        return "not recorded"


_MISSING = _Missing()


def _describe(old: Any, new: Any) -> str:
    """A change as "old, now new"; long lists (class names) by their first difference."""
    if _is_long_list(old) and _is_long_list(new):
        old, new = list(old), list(new)
        if len(old) != len(new):
            return f"{len(old)} entries, now {len(new)}"
        index = next(index for index, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
        return f"entry {index} is {old[index]!r}, now {new[index]!r}"
    return f"{old!r}, now {new!r}"


def _is_long_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > _SHORT_LIST


__all__ = ["RunSettingsError", "check_same_run", "differences"]
