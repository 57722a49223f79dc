"""Where a training step's oneDNN time goes, for this package and for timm, primitive by primitive.

Both TensorFlow (with bit_tf's oneDNN kernels) and PyTorch run their CPU convolutions through
oneDNN, which prints every primitive it executes, with its shapes, implementation and
milliseconds, when ONEDNN_VERBOSE=1. This script runs a few training steps of BiT in each
framework in a worker process with that switch on, and sums the log by primitive, direction and
kernel size, with the GFLOP/s each achieved:

    python benchmarks/onednn_profile.py                  # BiT-R50x1, 128x128, batch 16
    python benchmarks/onednn_profile.py --steps=3 --frameworks=tensorflow

TensorFlow runs with one inter-op thread here, so that its ops do not overlap and each
primitive's time is its own (the benchmark, cpu.py, uses two). A profile, not a benchmark: the
logging itself costs time, so compare the frameworks' rows, not these step times with cpu.py's.
"""

from __future__ import annotations

import collections
import ctypes
import importlib
import importlib.util
import os
import re
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from harness import define_model_flags, parse_name, random_images  # noqa: E402

FLAGS = flags.FLAGS
define_model_flags(image_size=128, batch_size=16)
flags.DEFINE_integer("threads", 2, "Intra-op threads for every framework.")
flags.DEFINE_integer("warmup", 2, "Untimed steps before the profiled ones.")
flags.DEFINE_integer("steps", 2, "Profiled steps.")
flags.DEFINE_list("frameworks", "tensorflow,torch", "Which frameworks to profile.")
flags.DEFINE_string("worker", None, "Internal: run as the worker of this framework.")

MARK = "=== profiled steps ==="
SHAPE = re.compile(r"([a-z]+)(\d+)")


def tensorflow_step():
    """A compiled training step of bit_tf's model: SGD momentum, as bit_tf.finetune uses."""
    # bit_tf first, as users import it: it turns TensorFlow's oneDNN kernels on.
    bit_tf = importlib.import_module("bit_tf")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = bit_tf.create_model(FLAGS.model, num_classes=FLAGS.num_classes)
    model.compile(
        optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = tf.constant(random_images(FLAGS.batch_size, FLAGS.image_size) * 2 - 1)
    labels = tf.constant(np.arange(FLAGS.batch_size) % FLAGS.num_classes)
    return lambda: model.train_on_batch(images, labels)


def torch_step():
    """timm's BiT training step: forward, cross-entropy, backward, SGD momentum."""
    import timm
    import torch

    torch.set_num_threads(FLAGS.threads)
    _, depth, width = parse_name(FLAGS.model)
    model = timm.create_model(
        f"resnetv2_{depth}x{width}_bit", pretrained=False, num_classes=FLAGS.num_classes
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    images = random_images(FLAGS.batch_size, FLAGS.image_size).transpose(0, 3, 1, 2)
    images = torch.from_numpy(images.copy()) * 2 - 1
    labels = torch.arange(FLAGS.batch_size) % FLAGS.num_classes

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


STEPS = {"tensorflow": tensorflow_step, "torch": torch_step}


def convolution_gflop_and_kernel(shape: str) -> tuple[float, str] | None:
    """GFLOP and kernel size ("3x3") of a convolution from oneDNN's shape string
    (mb16_ic64oc256_ih32oh32kh1...); None where the string lacks a size."""
    sizes = {key: int(value) for key, value in SHAPE.findall(shape.replace("_", " "))}
    needed = ("mb", "ic", "oc", "oh", "ow", "kh", "kw")
    if not all(key in sizes for key in needed):
        return None
    mb, ic, oc, oh, ow, kh, kw = (sizes[key] for key in needed)
    return 2 * mb * ic * oc * oh * ow * kh * kw / 1e9 / sizes.get("g", 1), f"{kh}x{kw}"


def summarize(log: str, steps: int) -> dict:
    """{(primitive, direction, kernel): [ms per step, GFLOP per step, calls per step]}."""
    totals: dict = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for line in log.split(MARK, 1)[-1].splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        primitive, direction = fields[at + 2], fields[at + 4]
        gflop, kernel = None, ""
        if primitive == "convolution":
            gflop, kernel = convolution_gflop_and_kernel(fields[-2]) or (None, "")
        entry = totals[(primitive, direction, kernel)]
        entry[0] += float(fields[-1]) / steps
        entry[1] += (gflop or 0.0) / steps
        entry[2] += 1 / steps
    return dict(totals)


def profile(framework: str) -> dict:
    """Runs the worker of `framework` with ONEDNN_VERBOSE=1 and summarizes its log."""
    argv = [sys.executable, os.path.abspath(__file__), f"--worker={framework}"]
    argv += [
        f"--{name}={getattr(FLAGS, name)}"
        for name in ("model", "image_size", "batch_size", "num_classes", "threads", "warmup")
    ]
    argv.append(f"--steps={FLAGS.steps}")
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": str(FLAGS.threads)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 or MARK not in result.stdout:
        raise RuntimeError(f"{framework} worker failed: {result.stderr[-2000:]}")
    return summarize(result.stdout, FLAGS.steps)


def report(summaries: dict) -> str:
    keys = sorted({key for summary in summaries.values() for key in summary})
    names = list(summaries)
    lines = [
        f"# oneDNN primitives of one training step: {FLAGS.model}, "
        f"{FLAGS.image_size}x{FLAGS.image_size}, batch {FLAGS.batch_size}, "
        f"{FLAGS.threads} threads",
        "",
        "| primitive | direction | kernel | "
        + " | ".join(f"{name} ms (GFLOP/s)" for name in names)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for key in keys:
        cells = []
        for name in names:
            milliseconds, gflop, _ = summaries[name].get(key, (0.0, 0.0, 0))
            rate = f" ({gflop / milliseconds * 1000:.0f})" if gflop and milliseconds else ""
            cells.append(f"{milliseconds:.1f}{rate}" if milliseconds else "")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    totals = [sum(entry[0] for entry in summaries[name].values()) for name in names]
    lines.append("| all | | | " + " | ".join(f"{total:.1f}" for total in totals) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if FLAGS.worker:
        step = STEPS[FLAGS.worker]()
        # oneDNN logs through C's stdout, which buffers apart from Python's: flush both at the
        # mark, so that no warm-up line lands after it.
        flush_c_stdout = ctypes.CDLL(None).fflush
        for _ in range(FLAGS.warmup):
            step()
        flush_c_stdout(None)
        print(MARK, flush=True)
        for _ in range(FLAGS.steps):
            step()
        flush_c_stdout(None)
        return
    unknown = [name for name in FLAGS.frameworks if name not in STEPS]
    if unknown:
        raise app.UsageError(f"Unknown frameworks {unknown}; choose from {sorted(STEPS)}.")
    frameworks = list(FLAGS.frameworks)
    if "torch" in frameworks and importlib.util.find_spec("timm") is None:
        print("torch: skipped, timm is not installed (pip install timm)")
        frameworks.remove("torch")
    print(report({name: profile(name) for name in frameworks}))


if __name__ == "__main__":
    app.run(main)
