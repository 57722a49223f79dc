"""The example scripts run end to end: the ablations in --quick mode write their table and plot,
and finetune_folder.py fine-tunes on a folder of images, skipping a damaged one."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENVIRONMENT = {
    **os.environ,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONPATH": os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])),
    "MPLBACKEND": "Agg",
}


@pytest.mark.parametrize(
    "script, outputs, rows",
    [
        (
            "normalization_ablation.py",
            ("normalization_ablation.md", "normalization_ablation.png"),
            ("| BN |", "| GN |", "| BN+WS |", "| GN+WS |", "| Noisy BN |", "batch 2", "batch 8"),
        ),
        ("mixup.py", ("mixup.md", "mixup.png"), ("0 (no MixUp)", "| 0.1 |", "| 1 |")),
    ],
)
def test_quick_mode_writes_table_and_plot(tmp_path, script, outputs, rows):
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "examples", script),
            "--quick",
            f"--output_dir={tmp_path}",
        ],
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table_path, plot_path = (os.path.join(tmp_path, name) for name in outputs)
    table = open(table_path).read()
    for row in rows:
        assert row in table, (row, table)
    with open(plot_path, "rb") as file:
        assert file.read(8) == PNG_SIGNATURE
    assert os.path.getsize(plot_path) > 5_000


def test_finetune_folder_trains_from_random_weights_on_a_folder(tmp_path):
    generator = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(5):
            pixels = generator.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{index}.png")
    (tmp_path / "photos" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "examples", "finetune_folder.py"),
            str(tmp_path / "photos"),
            "--model=BiT-S-R18x1",
            "--weights=",
            "--steps=2",
            "--batch_size=4",
            "--crop=16",
            f"--output={tmp_path / 'out'}",
        ],
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "broken.jpg" in completed.stderr  # reported as skipped
    assert "8 training and 2 validation images" in completed.stdout
    assert "validation accuracy:" in completed.stdout
    assert (tmp_path / "out" / "model.keras").is_file()
    assert (tmp_path / "out" / "checkpoints" / "progress.json").is_file()
