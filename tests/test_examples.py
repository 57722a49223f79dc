"""The example scripts run end to end in --quick mode and write their table and plot."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    environment = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
    }
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPOSITORY, "examples", script),
            "--quick",
            f"--output_dir={tmp_path}",
        ],
        env=environment,
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
