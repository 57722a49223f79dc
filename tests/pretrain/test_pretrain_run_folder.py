"""Pre-training knows its run: started again in a --checkpoint_dir that holds a run with other
settings, bit-pretrain refuses in one line (status 2) naming each difference and changes
nothing; --overwrite starts again; a folder of checkpoints written before runs recorded their
settings is resumed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bit_tf.pretrain.run_folder import SETTINGS_FILE, claim_folder
from bit_tf.training.run_settings import RunSettingsError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _photos(root):
    """Two class folders of four 16x16 JPEGs."""
    rng = np.random.default_rng(0)
    for label in ("ant", "bee"):
        os.makedirs(root / label)
        for index in range(4):
            pixels = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.jpg")


def _pretrain(data, checkpoint_dir, *extra):
    command = [
        sys.executable,
        "-m",
        "bit_cli.pretrain",
        "--model=BiT-S-R18x1",
        "--units_per_block=1,1,1,1",
        f"--dataset={data}",
        "--global_batch_size=4",
        "--warmup_steps=1",
        "--image_size=16",
        "--shuffle_buffer=8",
        "--checkpoint_every=1",
        "--log_every=1",
        f"--checkpoint_dir={checkpoint_dir}",
        "--hub_export_dir=",
        *extra,
    ]
    environment = dict(os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="2")
    environment["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, cwd=REPOSITORY
    )


def _files(folder):
    return {
        name: os.path.getmtime(os.path.join(folder, name))
        for name in os.listdir(folder)
        if name != ".bit_tf_run.lock"
    }


@pytest.mark.slow
def test_another_configuration_is_refused_in_one_line_and_overwrite_starts_again(tmp_path):
    data, run = tmp_path / "photos", tmp_path / "run"
    _photos(data)
    first = _pretrain(data, run, "--train_steps=2", "--seed=0")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _files(run)
    assert SETTINGS_FILE in before and "ckpt-2.index" in before

    other = _pretrain(data, run, "--train_steps=3", "--seed=1")
    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    lines = [line for line in other.stderr.splitlines() if line.startswith("bit-pretrain")]
    assert len(lines) == 1, other.stderr[-3000:]
    assert f"{run} holds a run with other settings" in lines[0]
    assert "seed: 0, now 1" in lines[0] and "train_steps: 2, now 3" in lines[0]
    assert "total_steps: 2, now 3" in lines[0] and "--overwrite" in lines[0]
    assert _files(run) == before  # nothing was written, nothing deleted

    again = _pretrain(data, run, "--train_steps=3", "--seed=1", "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    with open(run / "summary.json") as file:
        summary = json.load(file)
    assert summary["resumed_from_step"] == 0 and summary["step"] == 3
    with open(run / SETTINGS_FILE) as file:
        assert json.load(file)["seed"] == 1


SETTINGS = {"model": "BiT-S-R18x1", "seed": 0, "total_steps": 10}


def test_a_folder_of_checkpoints_without_settings_is_resumed_and_recorded(tmp_path, caplog):
    # What a run of the code before recorded settings leaves: TensorFlow's checkpoint files.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
    (tmp_path / "ckpt-4.index").write_bytes(b"")
    with caplog.at_level("WARNING", logger="bit_tf.pretrain"):
        claim_folder(str(tmp_path), SETTINGS)
    assert "did not record its settings: resuming it" in caplog.text
    assert (tmp_path / "ckpt-4.index").exists()
    with open(tmp_path / SETTINGS_FILE) as file:
        assert json.load(file) == SETTINGS
    claim_folder(str(tmp_path), SETTINGS)  # the same run: resumed
    with pytest.raises(RunSettingsError, match=r"seed: 0, now 3"):
        claim_folder(str(tmp_path), dict(SETTINGS, seed=3))


def test_overwrite_deletes_the_run_and_a_damaged_settings_file_is_named(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
    (tmp_path / "ckpt-4.index").write_bytes(b"")
    (tmp_path / SETTINGS_FILE).write_text("{cut")
    with pytest.raises(ValueError, match=r"settings.json is damaged \(not JSON"):
        claim_folder(str(tmp_path), SETTINGS)
    (tmp_path / "notes.txt").write_text("the user's")
    claim_folder(str(tmp_path), SETTINGS, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", SETTINGS_FILE]


def test_a_run_that_stopped_before_its_first_checkpoint_gives_way_to_another(tmp_path):
    # Its data did not decode, say: settings.json was recorded, no checkpoint was written.
    claim_folder(str(tmp_path), SETTINGS)
    claim_folder(str(tmp_path), dict(SETTINGS, seed=3))  # corrected: not refused
    with open(tmp_path / SETTINGS_FILE) as file:
        assert json.load(file) == dict(SETTINGS, seed=3)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (tmp_path / "ckpt-1.index").write_bytes(b"")
    with pytest.raises(RunSettingsError, match=r"seed: 3, now 0"):
        claim_folder(str(tmp_path), SETTINGS)  # once it has a checkpoint, the run is kept
