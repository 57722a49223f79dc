"""A pre-training folder knows its run: the settings that define it are recorded there, a run
with other settings is refused, and `overwrite` starts again.

The chief of a run records its settings in `<checkpoint_dir>/settings.json` (`run_settings`:
the model, the data, the schedule, the augmentation, the seed; not how it runs, such as the
strategy, the steps per loop or where it logs). Started again, the run resumes only if they
are the same; otherwise `claim_folder` raises `bit_tf.training.run_settings.RunSettingsError`
naming each difference, as fine-tuning does, and nothing there is changed. A folder whose run
stopped before its first checkpoint holds nothing to keep: another run takes it over. With
`overwrite`, the folder's checkpoints, settings and summary are deleted and the run starts at
step 0. A folder written before runs recorded their settings is resumed, and its settings
recorded.

Example:
    >>> settings = run_settings(config, schedule, dataset_size=1_281_167)
    >>> claim_folder("/ckpt/bit-s", settings, overwrite=False)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil

from bit_tf.training.atomic import write_text
from bit_tf.training.run_settings import check_same_run

__all__ = ["HOW_IT_RUNS", "SETTINGS_FILE", "checkpoint_files", "claim_folder", "run_settings"]

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
#: Config fields that say how a run is carried out, not which run it is: they may change
#: between a run and its resumption.
HOW_IT_RUNS = (
    "checkpoint_dir",
    "data_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "steps_per_loop",
    "logdir",
    "strategy",
    "tpu",
    "heartbeat_timeout",
    "overwrite",
)


def run_settings(config, schedule, dataset_size: int) -> dict:
    """What identifies a pre-training run: its config but `HOW_IT_RUNS`, with the schedule's
    length, boundaries and learning rate and the dataset's size, as JSON holds them.

    Example:
        >>> run_settings(config, schedule, 1_281_167)["total_steps"]
        28080
    """
    settings = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if field.name not in HOW_IT_RUNS
    }
    settings.update(
        examples=int(dataset_size),
        total_steps=int(schedule.total_steps),
        boundaries=[int(boundary) for boundary in schedule.boundaries],
        base_learning_rate=float(schedule.base_learning_rate),
    )
    return json.loads(json.dumps(settings))


def claim_folder(checkpoint_dir: str, settings: dict, overwrite: bool = False) -> None:
    """Makes `checkpoint_dir` the folder of the run with `settings` (see the module).

    Raises:
        RunSettingsError: the folder holds a run with other settings, and not `overwrite`.
        ValueError: its settings.json cannot be read (with the way out).

    Example:
        >>> claim_folder("/ckpt/bit-s", settings)
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, SETTINGS_FILE)
    if overwrite:
        _start_again(checkpoint_dir)
    elif os.path.exists(path) and checkpoint_files(checkpoint_dir):
        check_same_run(checkpoint_dir, _recorded(path), settings)
        return
    elif os.path.exists(path):
        # A run that stopped before its first checkpoint (its data did not decode, say): there
        # is nothing of it to keep, so its settings give way to these.
        log.info("%s holds no checkpoint yet: recording this run's settings.", checkpoint_dir)
    elif checkpoint_files(checkpoint_dir):
        log.warning(
            "%s holds checkpoints of a run that did not record its settings: resuming it "
            "with these settings.",
            checkpoint_dir,
        )
    write_text(path, json.dumps(settings, indent=1))


def _recorded(path: str) -> dict:
    """The settings recorded in `path`."""
    try:
        with open(path, encoding="utf-8") as file:
            settings = json.load(file)
    except (UnicodeDecodeError, ValueError) as error:
        problem = f"not JSON: {error}"
    else:
        if isinstance(settings, dict):
            return settings
        problem = f"it holds a {type(settings).__name__}, not the run's settings"
    raise ValueError(
        f"{path} is damaged ({problem}); start the run again there with --overwrite "
        "(overwrite=True), which replaces its checkpoints, or use another folder."
    )


def checkpoint_files(checkpoint_dir: str) -> list[str]:
    """The files of `tf.train.CheckpointManager` in `checkpoint_dir` (none: no run has saved
    a checkpoint there).

    Example:
        >>> checkpoint_files("/ckpt/bit-s")[:1]
        ['/ckpt/bit-s/ckpt-4.index']
    """
    names = glob.glob(os.path.join(glob.escape(checkpoint_dir), "ckpt-*"))
    state = os.path.join(checkpoint_dir, "checkpoint")
    return names + ([state] if os.path.exists(state) else [])


def _start_again(checkpoint_dir: str) -> None:
    """Deletes the run in `checkpoint_dir`: its checkpoints, settings, summary and the
    workers' throw-away copies."""
    found = checkpoint_files(checkpoint_dir)
    for name in (SETTINGS_FILE, "summary.json"):
        if os.path.exists(os.path.join(checkpoint_dir, name)):
            found.append(os.path.join(checkpoint_dir, name))
    for path in found:
        os.remove(path)
    for folder in glob.glob(os.path.join(glob.escape(checkpoint_dir), ".worker-*")):
        shutil.rmtree(folder, ignore_errors=True)
    if found:
        log.warning("overwrite: deleted the run in %s; starting again.", checkpoint_dir)
