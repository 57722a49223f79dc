"""Checkpoints are written, read and exported array by array: the memory this costs on top of the
model is a few times its largest array, not the file's size, measured in a fresh process (its
resident high-water mark)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Builds a BiT-M-R18x1 (a 90 MB checkpoint, half of it the 21843-class head, which is large enough
# to be handed to its variable without a copy), then writes its checkpoint, loads it back into a
# new model and builds the export's named variables, each step's growth of the high-water mark
# over the resident size just before it (the mark reset through /proc/self/clear_refs).
MEASURE = textwrap.dedent(
    """
    import json, math, os, sys
    import bit_tf, keras
    from bit_tf.models import weights
    from hub_export.tracing import OfficialForward

    def status(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def growth(step):
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        result = step()
        return status("VmHWM") - before, result

    path = sys.argv[1]
    model = bit_tf.create_model("BiT-M-R18x1")
    target = bit_tf.create_model("BiT-M-R18x1")
    saved, _ = growth(lambda: weights.save_official_weights(model, path))
    loaded, _ = growth(lambda: weights.load_official_weights(target, path))
    exported, forward = growth(lambda: OfficialForward(target, trainable=False))
    # Reading a loaded variable shares its buffer (no variable left copying on every read).
    largest = max(target.weights, key=lambda variable: math.prod(variable.shape))
    reread, values = growth(lambda: [largest.value.read_value() for _ in range(4)])
    del values
    same = all(
        (keras.ops.convert_to_numpy(a) == keras.ops.convert_to_numpy(b)).all()
        for a, b in zip(model.weights, target.weights)
    )
    largest.assign_add(keras.ops.ones(largest.shape))  # the handed-over buffer is the variable's
    source = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    updated = (keras.ops.convert_to_numpy(largest) == source + 1).all()
    print(json.dumps({"file": os.path.getsize(path), "save": saved, "load": loaded,
                      "export_variables": exported, "reread": reread,
                      "largest": 4 * math.prod(largest.shape), "same": bool(same),
                      "updated": bool(updated)}))
    """
)


def run_python(*arguments) -> subprocess.CompletedProcess:
    """Python in a fresh process (on the CPU), from the repository; it must succeed."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPOSITORY,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_save_load_and_export_hold_no_copy_of_the_weights(tmp_path):
    completed = run_python("-c", MEASURE, str(tmp_path / "r18.npz"))
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    size = figures["file"]
    assert size > 40e6
    # Reading or writing the whole file at once (as numpy.load and numpy.savez do), or a copy
    # of every weight, would each cost the file's size at least; one array at a time costs a
    # few times the largest array (here the head, half the file) at most.
    largest = figures["largest"]
    for step in ("save", "load", "export_variables"):
        assert figures[step] < min(size, 3.5 * largest), (step, figures)
    assert figures["reread"] < largest, figures  # four reads of a loaded variable, no copy
    assert figures["same"] and figures["updated"], figures


@pytest.mark.slow
def test_the_checkpoint_memory_benchmark_writes_its_table_and_data_file(tmp_path):
    run_python(
        "benchmarks/checkpoint_memory.py",
        "--models=BiT-S-R18x1",
        f"--results_dir={tmp_path / 'results'}",
        f"--output={tmp_path / 'table.md'}",
    )
    row = (tmp_path / "table.md").read_text().splitlines()[-1]
    assert row.startswith("| BiT-S-R18x1 | 45 MiB |") and row.count("x)") == 4, row
    (data_file,) = (tmp_path / "results").iterdir()
    run = json.loads(data_file.read_text())
    assert run["benchmark"] == "checkpoint-memory" and run["rows"][0]["file_bytes"] > 40e6
    for step in ("random", "load", "build", "export"):
        assert run["rows"][0][step]["load_peak"] > run["rows"][0][step]["baseline_rss"]
