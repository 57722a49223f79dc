"""Two serving SavedModels side by side in one process: milliseconds per request, alternating.

For a change to the serving export, export the same model with the code before and after it
(`hub_export.export_serving`, or `bit-export --serving_dir`), then time both here on the same
request of JPEGs, in alternating rounds (the order reversed every other round), with
`benchmarks/cpu.py`'s threads (2 intra-op, 2 inter-op, `OMP_NUM_THREADS=2`). A machine whose
load changes treats both alike; the figure to read is the median of the per-round ratios.

    python benchmarks/serving_ab.py --before=/tmp/before/1 --after=/tmp/after/1
    python benchmarks/serving_ab.py --before=... --after=... --image_size=128 --rounds=12

Writes benchmarks/results/<UTC time>-serving-ab.json (`--results_dir=` for none).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the SavedModel version folder before")
    parser.add_argument("--after", required=True, help="the SavedModel version folder after")
    parser.add_argument("--image_size", type=int, default=128, help="side of the JPEGs")
    parser.add_argument("--batch_size", type=int, default=16, help="JPEGs per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=3, help="requests per model and round")
    parser.add_argument("--results_dir", default=None)
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(arguments.threads))

    import importlib

    import harness

    importlib.import_module("bit_tf")  # before TensorFlow, as users import it: oneDNN on
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(arguments.threads)
    tf.config.threading.set_inter_op_parallelism_threads(arguments.threads)
    started = time.time()
    images = harness.random_images(arguments.batch_size, arguments.image_size)
    pixels = (images * 255).astype("uint8")
    request = tf.constant([tf.io.encode_jpeg(image).numpy() for image in pixels])
    models = {
        side: tf.saved_model.load(path).signatures["serving_default"]
        for side, path in (("before", arguments.before), ("after", arguments.after))
    }
    for serve in models.values():  # tracing and first allocations
        for _ in range(2):
            serve(image_bytes=request)
    seconds = {side: [] for side in models}
    for round_index in range(arguments.rounds):
        order = list(models) if round_index % 2 == 0 else list(models)[::-1]
        for side in order:
            begin = time.perf_counter()
            for _ in range(arguments.requests):
                outputs = models[side](image_bytes=request)
                [value.numpy() for value in outputs.values()]
            seconds[side].append((time.perf_counter() - begin) / arguments.requests)
    ratios = [
        after / before for before, after in zip(seconds["before"], seconds["after"], strict=True)
    ]
    for side, values in seconds.items():
        print(
            f"{side}: {statistics.median(values) * 1e3:.1f} ms per request (median of "
            f"{len(values)} rounds; fastest {min(values) * 1e3:.1f} ms)"
        )
    print(f"after / before, median of the per-round ratios: {statistics.median(ratios):.3f}")
    run = {
        "command": [os.path.basename(sys.executable), *sys.argv],
        "request": {"jpegs": arguments.batch_size, "side": arguments.image_size},
        "threads": arguments.threads,
        "git": harness.git_commit(),
        "machine": harness.machine(),
        "versions": harness.package_versions(("tensorflow", "keras", "numpy")),
        "seconds_per_request_by_round": seconds,
        "median_ms": {side: statistics.median(values) * 1e3 for side, values in seconds.items()},
        "ratio_after_before_median": statistics.median(ratios),
    }
    folder = arguments.results_dir
    if folder is None:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if folder:
        print("data file:", harness.write_results(folder, "serving-ab", run, started))


if __name__ == "__main__":
    main()
