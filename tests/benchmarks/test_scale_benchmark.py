"""benchmarks/scale.py keeps working: one small folder, one contender, its data file and plot
(not a measurement)."""

import glob
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scale_benchmark_writes_memory_and_time_per_size_and_a_plot(tmp_path):
    results = tmp_path / "results"
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/scale.py",
            "--quick",
            "--parts=sizes",
            "--sizes=60",
            "--contenders=finetune",
            f"--work_dir={tmp_path / 'work'}",
            f"--results_dir={results}",
        ],
        cwd=REPOSITORY,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    (data_file,) = glob.glob(str(results / "*-scale.json"))
    run = json.loads(open(data_file).read())
    assert run["schema"] == "bit_tf-scale/1" and run["git"]["commit"]
    for name in ("finetune",):
        (point,) = run["results"]["sizes"][name]
        assert point["images"] == 60 and point["returncode"] == 0, point
        assert point["peak_rss_mib"] > 100 and point["seconds"] > 0
    assert os.path.getsize(data_file[: -len(".json")] + ".png") > 1000
