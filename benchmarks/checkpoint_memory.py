"""Peak resident memory to load and to export an official `.npz` checkpoint, against its size.

For each model, a child process writes a checkpoint of random weights in the official layout
(array by array, so the writer stays small); then, each in a fresh process:

- `random`: `bit_tf.create_model(name)` without a file, the floor: the model itself and what
  building it costs;
- `load`: `bit_tf.create_model(name, weights=path)`, as the library loads a file;
- `build`: `bit_cli.common.build_model("", path)`, as bit-export, bit-finetune and bit-predict
  load `--weights` (the architecture read from the file);
- `export`: that model written as a TF-Hub module (`hub_export.export_module`,
  kind="classification"), the high-water mark reset after loading.

Each figure is the growth of the process's resident high-water mark (`VmHWM`) over its resident
size just before the step (after `import bit_tf, tensorflow`), and its ratio to the file's size.

    python benchmarks/checkpoint_memory.py                       # R50x1, R101x1, R152x1, BiT-M
    python benchmarks/checkpoint_memory.py --models=BiT-S-R50x1 --source=/tmp/older-checkout

`--source` measures the bit_tf of another checkout (e.g. before a change) with the same
checkpoints. Writes benchmarks/results/<UTC time>-checkpoint-memory.json (`--results_dir=` for
none) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCHMARKS)
STEPS = ("random", "load", "build", "export")


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def write_checkpoint(name: str, path: str) -> dict:
    """A checkpoint of random weights with the shapes of `name`, written array by array."""
    import numpy as np

    import bit_tf
    from bit_tf.models.weights import HEAD_KERNEL, official_variables

    model = bit_tf.create_model(name)
    shapes = {key: tuple(variable.shape) for key, variable in official_variables(model).items()}
    shapes[HEAD_KERNEL] = (1, 1, *shapes[HEAD_KERNEL])
    del model
    generator = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, shape in sorted(shapes.items()):
            array = generator.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            with archive.open(f"{key}.npy", "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)
    parameters = sum(int(np.prod(shape)) for shape in shapes.values())
    return {"parameters": parameters, "file_bytes": os.path.getsize(path)}


def _head_size(path: str) -> int:
    import numpy as np

    with zipfile.ZipFile(path) as archive, archive.open("resnet/head/conv2d/bias.npy") as stream:
        np.lib.format.read_magic(stream)
        shape, _, _ = np.lib.format.read_array_header_1_0(stream)
    return shape[0]


def measure(step: str, name: str, path: str, work_dir: str) -> dict:
    """One step in this (fresh) process; the figures as a dict."""
    import numpy as np
    import tensorflow as tf  # noqa: F401 - imported before the baseline is taken

    import bit_tf

    baseline = _status("VmRSS")
    _reset_peak()
    started = time.monotonic()
    if step == "build":
        from bit_cli import common

        model = common.build_model("", path)
    elif step == "random":
        model = bit_tf.create_model(name, num_classes=_head_size(path))
    else:
        model = bit_tf.create_model(name, weights=path)
    seconds = time.monotonic() - started
    figures = {
        "bit_tf": os.path.dirname(bit_tf.__file__),
        "baseline_rss": baseline,
        "load_peak": _status("VmHWM"),
        "load_seconds": seconds,
    }
    figures["model_bytes"] = sum(
        math.prod(variable.shape) * np.dtype(variable.dtype).itemsize for variable in model.weights
    )
    if step == "export":
        import hub_export

        after_load = _status("VmRSS")
        _reset_peak()
        started = time.monotonic()
        hub_export.export_module(model, os.path.join(work_dir, "module"), kind="classification")
        figures.update(
            export_baseline_rss=after_load,
            export_peak=_status("VmHWM"),
            export_seconds=time.monotonic() - started,
        )
    return figures


def run_child(arguments: list[str], source: str | None) -> dict:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if source:
        environment["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(source), environment.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{arguments}: {completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mib(count: float) -> str:
    return f"{count / 2**20:,.0f} MiB"


def table(rows: list[dict]) -> str:
    """One row per model: each step's peak growth in MiB and as a multiple of the file size."""
    lines = [
        "| model | file | random weights, no file | load | build_model | export after load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        size = row["file_bytes"]
        cells = [row["model"], mib(size)]
        for step in STEPS:
            growth = peak_growth(row[step], step)
            cells.append(f"{mib(growth)} ({growth / size:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peak_growth(figures: dict, step: str) -> int:
    """The growth of the high-water mark over the resident size before the step."""
    if step == "export":
        return figures["export_peak"] - figures["export_baseline_rss"]
    return figures["load_peak"] - figures["baseline_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="BiT-M-R50x1,BiT-M-R101x1,BiT-M-R152x1")
    parser.add_argument("--source", default=None, help="measure the bit_tf of this checkout")
    parser.add_argument("--label", default="", help="a word for the data file, e.g. 'before'")
    parser.add_argument("--results_dir", default=None)
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--child", choices=("write", *STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--work_dir", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:
        if arguments.child == "write":
            sys.path.insert(0, REPOSITORY)
            result = write_checkpoint(arguments.model, arguments.checkpoint)
        else:
            result = measure(
                arguments.child, arguments.model, arguments.checkpoint, arguments.work_dir
            )
        print(json.dumps(result))
        return

    sys.path.insert(0, BENCHMARKS)
    import harness

    started = time.time()
    rows = []
    work = tempfile.mkdtemp(prefix="bit-tf-checkpoint-memory-")
    try:
        for name in arguments.models.split(","):
            path = os.path.join(work, f"{name}.npz")
            row = {
                "model": name,
                **run_child(["--child=write", f"--model={name}", f"--checkpoint={path}"], None),
            }
            for step in STEPS:
                step_dir = tempfile.mkdtemp(dir=work)
                row[step] = run_child(
                    [
                        f"--child={step}",
                        f"--model={name}",
                        f"--checkpoint={path}",
                        f"--work_dir={step_dir}",
                    ],
                    arguments.source,
                )
                shutil.rmtree(step_dir)
            os.remove(path)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = table(rows)
    print(report)
    if arguments.output:
        with open(arguments.output, "w") as handle:
            handle.write(report + "\n")
    folder = arguments.results_dir
    if folder is None:
        folder = os.path.join(BENCHMARKS, "results")
    if folder:
        run = {
            "schema": "bit_tf-benchmark/1",
            "benchmark": "checkpoint-memory",
            "command": " ".join(["python", *sys.argv]),
            "label": arguments.label,
            "source": arguments.source,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "git": harness.git_commit(),
            "machine": harness.machine(),
            "versions": harness.versions(),
            "rows": rows,
        }
        label = "checkpoint-memory" + (f"-{arguments.label}" if arguments.label else "")
        print(harness.write_results(folder, label, run, started))


if __name__ == "__main__":
    main()
