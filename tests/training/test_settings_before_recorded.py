"""A run recorded before a setting became a choice resumes with that setting's old value, and is
refused, naming it, with another."""

import json

import pytest

from bit_tf.training.checkpoints import SETTINGS_BEFORE_RECORDED, find_resumable
from bit_tf.training.run_settings import RunSettingsError

OLD_DISTILLATION = {
    "student": "BiT-S-R18x1",
    "batch_size": 512,
    "base_lr": 0.003,
    "mixup_alpha": 1.0,
    "seed": 0,
}


def write_old_run(folder, settings):
    folder.mkdir()
    (folder / "progress.json").write_text(
        json.dumps({"settings": settings, "step": 3, "finished": False})
    )
    (folder / "last.keras").write_bytes(b"a checkpoint")


def test_a_run_recorded_before_the_choices_resumes_with_their_old_values(tmp_path):
    write_old_run(tmp_path / "run", OLD_DISTILLATION)
    wanted = {**OLD_DISTILLATION, **SETTINGS_BEFORE_RECORDED}
    last, progress = find_resumable(str(tmp_path / "run"), wanted)
    assert last.endswith("last.keras") and progress["step"] == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [("hyperrule", "authors"), ("eval_resize", "short_side_crop"), ("variant", "consistent")],
)
def test_another_value_of_a_new_choice_is_named(tmp_path, name, value):
    write_old_run(tmp_path / "run", OLD_DISTILLATION)
    wanted = {**OLD_DISTILLATION, **SETTINGS_BEFORE_RECORDED, name: value}
    with pytest.raises(RunSettingsError, match=f"{name}: "):
        find_resumable(str(tmp_path / "run"), wanted)
