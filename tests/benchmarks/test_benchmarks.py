"""The benchmark scripts keep working: one quick repetition each, the smallest BiT model and small
images (not a timing)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get(
    "BIT_TF_FIXTURES", os.path.join(os.path.dirname(REPOSITORY), "shared", "fixtures")
)


def run_script(arguments, tmp_path, **env):
    output = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, *arguments, f"--output={output}"],
        cwd=REPOSITORY,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output.read_text()


# One quick repetition of the bit_tf contenders on the smallest model and small images
# (predict_folded runs the same predict on folded weights: tests/models/test_inference.py).
QUICK_CPU_RUN = [
    "benchmarks/cpu.py",
    "--quick",
    "--model=BiT-S-R18x1",
    "--image_size=32",
    "--batch_size=2",
    "--num_classes=10",
    "--contenders=bit_tf.predict,bit_tf.serving,bit_tf.finetune",
]


def test_cpu_benchmark_prints_its_table(tmp_path):
    results = tmp_path / "results"
    report = run_script([*QUICK_CPU_RUN, f"--results_dir={results}"], tmp_path)
    check_data_file(results, report)
    assert "| contender | images/s (median)" in report
    contenders = ("bit_tf.predict", "bit_tf.serving", "bit_tf.finetune")
    for contender in contenders:
        row = next(line for line in report.splitlines() if line.startswith(f"| {contender} "))
        assert "failed" not in row, row
        assert float(row.split("|")[2]) > 0
    finetune = next(line for line in report.splitlines() if line.startswith("| bit_tf.finetune "))
    all_steps, after_warmup = [cell.strip() for cell in finetune.split("|")[-3:-1]]
    assert all_steps.endswith(" MiB") and after_warmup.endswith(" MiB"), finetune
    # The breakdown of that memory: TensorFlow's tensor peak, then growth by kind of mapping.
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| contender | tensors"))
    breakdown = next(line for line in lines[header:] if line.startswith("| bit_tf.finetune "))
    cells = [cell.strip() for cell in breakdown.split("|")[2:-1]]
    assert len(cells) == 6 and all(cell.endswith(" MiB") for cell in cells), breakdown
    tensors, *_, total = (int(cell.split()[0]) for cell in cells)
    # The resident growth after the last step (smaps) cannot exceed the high-water mark's growth
    # over the same baseline (status), give or take the pages of the reading itself.
    assert tensors > 0 and 0 < total <= int(all_steps.split()[0]) + 4, (breakdown, finetune)
    assert "float32 matmul peak" in report and "tensorflow 2." in report


def check_data_file(folder, report):
    """A quick run given --results_dir wrote one data file there, with the raw timings and the
    figures its table shows."""
    (path,) = folder.iterdir()
    assert re.fullmatch(r"\d{8}T\d{6}Z-cpu-float32\.json", path.name), path.name
    run = json.loads(path.read_text())
    assert run["schema"] == "bit_tf-benchmark/1" and run["benchmark"] == "cpu-float32"
    assert "benchmarks/cpu.py --quick" in run["command"]
    assert run["flags"]["model"] == "BiT-S-R18x1" and run["flags"]["batch_size"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["time_utc"])
    assert set(run["git"]) == {"commit", "modified"}
    assert run["machine"]["cpu"] and run["machine"]["logical_cpus"] >= 1
    for package in ("python", "tensorflow", "keras", "numpy", "torch", "timm", "compiler"):
        assert package in run["versions"], package
    assert run["versions"]["tensorflow"].startswith("2.")
    assert run["matmul_peak"]["gflops"] > 0 and run["matmul_peak"]["dtype"] == "float32"
    assert run["forward_gflop_per_image"] > 0
    assert isinstance(run["vs_timm"], dict)
    for name in ("bit_tf.predict", "bit_tf.serving", "bit_tf.finetune"):
        entry = run["contenders"][name]
        # --quick: one warm-up step, one repeat of one step.
        assert len(entry["warmup_step_seconds"]) == 1, entry
        assert len(entry["step_seconds_by_repeat"]) == 1, entry
        assert len(entry["step_seconds_by_repeat"][0]) == 1, entry
        assert entry["median_seconds_per_step"] == entry["seconds_per_step_by_repeat"][0]
        rate = entry["images_per_second"]["median"]
        assert rate == pytest.approx(2 / entry["median_seconds_per_step"])
        assert entry["gflops"] > 0 and entry["percent_of_peak"] > 0
        assert "vs_timm" in entry
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} "))
        assert row.split("|")[2].strip() == f"{rate:.1f}", (row, rate)
    memory = run["contenders"]["bit_tf.finetune"]["memory_bytes"]
    assert memory["rss_growth"] > 0 and memory["tensor_peak_growth"] > 0
    assert set(memory["growth_by_kind"]) == {
        "large anonymous",
        "heap",
        "other anonymous",
        "file-backed",
    }


def test_cpu_benchmark_runs_in_bfloat16(tmp_path):
    results = os.path.join(REPOSITORY, "benchmarks", "results")
    before = set(os.listdir(results)) if os.path.isdir(results) else set()
    # The contenders whose dtype handling differs (predict_folded computes as predict does; the
    # serving export holds the float32 graph whatever --dtype says).
    contenders = "--contenders=bit_tf.predict,bit_tf.finetune"
    report = run_script([*QUICK_CPU_RUN, contenders, "--dtype=mixed_bfloat16"], tmp_path)
    # A --quick run without --results_dir writes no data file.
    after = set(os.listdir(results)) if os.path.isdir(results) else set()
    assert not {name for name in after - before if "bfloat16" in name}, after - before
    assert "batch 2, mixed_bfloat16, 2 threads" in report
    for contender in ("bit_tf.predict", "bit_tf.finetune"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {contender} "))
        assert "failed" not in row and float(row.split("|")[2]) > 0, row
    # torch's bfloat16 matmul when torch is installed, numpy's float32 otherwise.
    peak_dtype = "bfloat16" if importlib.util.find_spec("torch") else "float32"
    assert f"\n{peak_dtype} matmul peak (2048x2048" in report


def test_onednn_profile_sums_the_primitives_of_a_training_step():
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/onednn_profile.py",
            "--frameworks=tensorflow",
            "--model=BiT-S-R18x1",
            "--image_size=32",
            "--batch_size=2",
            "--num_classes=10",
            "--warmup=1",
            "--steps=1",
        ],
        cwd=REPOSITORY,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:4]): line.split("|")[4].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| convolution ")
    }
    # Every convolution of the step ran forward and both backward directions, and the 3x3 ones
    # report a rate: "milliseconds (GFLOP/s)".
    for direction in ("forward_training", "backward_data", "backward_weights"):
        assert re.fullmatch(r"[\d.]+ \(\d+\)", rows[("convolution", direction, "3x3")]), rows


def test_gpu_benchmark_runs_on_jax_here(tmp_path):
    pytest.importorskip("jax")
    report = run_script(
        [
            "benchmarks/gpu.py",
            "--quick",
            "--model=BiT-S-R18x1",
            "--image_size=32",
            "--batch_size=2",
            "--num_classes=10",
            "--precision=float32",
            "--contenders=bit_tf.jax.inference",
            f"--check_fixtures={FIXTURES}",
        ],
        tmp_path,
        KERAS_BACKEND="jax",
    )
    # The script starts, checks both GroupNorms against the authors and runs one contender; its
    # training contender is for the GPU (benchmarks/gpu.sh).
    for contender in ("bit_tf.jax.inference",):
        row = next(line for line in report.splitlines() if line.startswith(f"| {contender} "))
        assert "failed" not in row, row
    # The correctness check ran both GroupNorms against the authors' outputs and each other.
    errors = [float(value) for value in re.findall(r"relative error (\S+?)(?:;|$)", report, re.M)]
    assert len(errors) == 3 and max(errors) < 1e-4, report


def test_peak_memory_reset_forgets_an_earlier_peak():
    """The harness's steady-state memory figure rests on resetting the high-water mark."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import harness\n"
        "block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); del block\n"
        "before = harness.peak_rss_bytes()\n"
        "assert harness.reset_peak_rss(), 'no /proc/self/clear_refs'\n"
        "after = harness.peak_rss_bytes()\n"
        "print(before - after)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 200 * 2**20


def test_resident_memory_by_kind_sees_a_large_block():
    """A 300 MiB block (glibc maps it on its own) shows as large anonymous memory."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import harness\n"
        "before = harness.resident_by_kind()\n"
        "block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096])\n"
        "after = harness.resident_by_kind()\n"
        "print(after['large anonymous'] - before['large anonymous'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert 290 * 2**20 <= int(result.stdout.strip()) <= 310 * 2**20
