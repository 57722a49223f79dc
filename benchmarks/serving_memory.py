"""Peak memory of a serving SavedModel answering one request of N large photos, against N.

Exports a classifier (random weights) with `hub_export.export_serving` once per serving batch
size, writes one photo-like JPEG, then for each batch size and each N starts a fresh process
that loads the SavedModel and answers one `serving_default` request of N copies of the photo,
and records that process's resident memory after loading and its high-water mark (`VmHWM`)
after the request. "whole" exports a batch size of `--whole_up_to`: requests up to that size
in one batch, as every serving export answered them before requests were split.

    python benchmarks/serving_memory.py                          # R50x1 at 384, 2000x2000 JPEGs
    python benchmarks/serving_memory.py --counts=16,64,256 --whole_up_to=64

Writes benchmarks/results/<UTC time>-serving-memory.json (`--results_dir=` for none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def photo_jpeg(side: int, path: str) -> int:
    """Writes a smooth, photo-like JPEG of side x side pixels (gradients and mild noise) to
    `path` and returns its size in bytes."""
    import numpy as np
    from PIL import Image

    rows, columns = np.mgrid[0:side, 0:side].astype(np.float32) / side
    pixels = np.stack([columns * 255, rows * 255, (rows + columns) * 127], axis=-1)
    pixels += np.random.default_rng(0).normal(0, 8, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return os.path.getsize(path)


def serve_once(version_dir: str, photo: str, count: int) -> dict:
    """In this process: load the SavedModel, answer one request of `count` copies of `photo`."""
    import harness
    import tensorflow as tf

    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    with open(photo, "rb") as handle:
        data = handle.read()
    request = tf.constant([data] * count)
    loaded = harness.rss_bytes()
    begin = time.perf_counter()
    outputs = serve(image_bytes=request)
    valid = int(outputs["valid"].numpy().sum())
    return {
        "count": count,
        "valid": valid,
        "seconds": time.perf_counter() - begin,
        "rss_after_load_bytes": loaded,
        "peak_rss_bytes": harness.peak_rss_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="BiT-S-R50x1")
    parser.add_argument("--image_size", type=int, default=384, help="the export's crop")
    parser.add_argument("--photo_size", type=int, default=2000, help="side of the photos")
    parser.add_argument("--counts", default="16,64", help="photos per request")
    parser.add_argument("--batch_sizes", default="16,whole", help="serving batch sizes")
    parser.add_argument(
        "--whole_up_to", type=int, default=64, help="the largest request served as one batch"
    )
    parser.add_argument("--results_dir", default=None)
    parser.add_argument("--serve", nargs=3, metavar=("VERSION_DIR", "PHOTO", "COUNT"))
    arguments = parser.parse_args()
    if arguments.serve:
        version_dir, photo, count = arguments.serve
        print("RESULT " + json.dumps(serve_once(version_dir, photo, int(count))), flush=True)
        return

    import harness

    import bit_tf
    import hub_export

    started = time.time()
    counts = [int(count) for count in arguments.counts.split(",")]
    batch_sizes = arguments.batch_sizes.split(",")
    folder = tempfile.TemporaryDirectory(prefix="bit-serving-memory-")
    photo = os.path.join(folder.name, "photo.jpg")
    photo_bytes = photo_jpeg(arguments.photo_size, photo)
    model = bit_tf.create_model(arguments.model, num_classes=1000)
    exports = {}
    for batch_size in batch_sizes:
        size = arguments.whole_up_to if batch_size == "whole" else int(batch_size)
        exports[batch_size] = hub_export.export_serving(
            model,
            os.path.join(folder.name, f"batch_{batch_size}"),
            image_size=arguments.image_size,
            batch_size=size,
        )
    del model
    rows = []
    for batch_size, version_dir in exports.items():
        for count in counts:
            if batch_size == "whole" and count > arguments.whole_up_to:
                continue  # its memory grows with the request: kept within the machine's
            completed = subprocess.run(
                [sys.executable, __file__, "--serve", version_dir, photo, str(count)],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not lines:
                raise SystemExit(f"the serving process failed:\n{completed.stderr[-3000:]}")
            row = {"batch_size": batch_size, **json.loads(lines[-1][len("RESULT ") :])}
            rows.append(row)
            print(
                f"batch size {batch_size:>5}, {count:>4} photos: peak RSS "
                f"{row['peak_rss_bytes'] / 2**30:.2f} GiB (after loading "
                f"{row['rss_after_load_bytes'] / 2**30:.2f} GiB), {row['seconds']:.1f} s",
                flush=True,
            )
    folder.cleanup()
    run = {
        "command": [os.path.basename(sys.executable), *sys.argv],
        "model": arguments.model,
        "image_size": arguments.image_size,
        "photo": {"side": arguments.photo_size, "jpeg_bytes": photo_bytes},
        "git": harness.git_commit(),
        "machine": harness.machine(),
        "versions": harness.package_versions(("tensorflow", "keras", "numpy")),
        "results": rows,
    }
    folder_out = arguments.results_dir
    if folder_out is None:
        folder_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if folder_out:
        print("data file:", harness.write_results(folder_out, "serving-memory", run, started))


if __name__ == "__main__":
    main()
