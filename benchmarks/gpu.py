"""BiT on one GPU: this package on KERAS_BACKEND=jax against timm (eager and torch.compile).

BiT-R50x1, 224x224, batch 128, bfloat16, a training step (forward, backward, SGD-momentum
update) and inference; each contender in a worker process of its own, alternated, medians.
`benchmarks/gpu.sh` runs it on the lent GPU machine; here it runs on the CPU, small:

    KERAS_BACKEND=jax python benchmarks/gpu.py --image_size=64 --batch_size=2 --quick

A contender whose framework is missing is reported as such, not skipped silently. Every run but
a --quick one writes its raw figures to benchmarks/results/<UTC time>-gpu-<precision>.json
(--results_dir moves it; '' writes none), as benchmarks/cpu.py does.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app, flags  # noqa: E402
from harness import (  # noqa: E402
    Worker,
    benchmark,
    define_flags,
    forward_flops,
    parse_name,
    random_images,
    serve,
    versions,
)

FLAGS = flags.FLAGS
define_flags(
    image_size=224,
    batch_size=128,
    steps_per_repeat=10,
    warmup=3,
    contenders="bit_tf.jax.inference,bit_tf.jax.train,bit_tf.jax_keras_gn.inference,"
    "bit_tf.jax_keras_gn.train,timm.eager.inference,timm.eager.train,"
    "timm.compile.inference,timm.compile.train",
)
flags.DEFINE_enum("precision", "bfloat16", ["bfloat16", "float32"], "Compute precision.")
flags.DEFINE_string(
    "check_fixtures",
    None,
    "Before timing, check the JAX model on this machine's accelerator against the authors' "
    "outputs in this folder (bit_r14x1_official.npz, bit_r14x1_reference_outputs.npz).",
)


class BitJax(Worker):
    """The Keras 3 model on JAX: jitted stateless calls, as JAX users run Keras models.

    `fused` False runs the plain keras.ops GroupNorm and weight standardization instead of
    bit_tf's fused kernels (`bit_tf.kernels.configure(fused=False)`).
    """

    training = False
    fused = True

    def prepare(self):
        os.environ["KERAS_BACKEND"] = "jax"
        import jax
        import keras
        import numpy as np

        import bit_tf

        bit_tf.kernels.configure(fused=self.fused)

        if FLAGS.precision == "bfloat16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.jax = jax
        model = bit_tf.create_model(FLAGS.model, num_classes=FLAGS.num_classes)
        self.images = jax.numpy.asarray(random_images(FLAGS.batch_size, FLAGS.image_size))
        self.labels = jax.numpy.asarray(np.arange(FLAGS.batch_size) % FLAGS.num_classes)
        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]
        if not self.training:
            self.state = (trainable, non_trainable)
            self.step_function = jax.jit(
                lambda state, images: model.stateless_call(*state, images, training=False)[0]
            )
            return
        optimizer = keras.optimizers.SGD(learning_rate=0.003, momentum=0.9)
        optimizer.build(model.trainable_variables)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def compute_loss(trainable, non_trainable, images, labels):
            logits, non_trainable = model.stateless_call(
                trainable, non_trainable, images, training=True
            )
            return loss(labels, keras.ops.cast(logits, "float32")), non_trainable

        gradient = jax.value_and_grad(compute_loss, has_aux=True)

        def train_step(state, images, labels):
            trainable, non_trainable, optimizer_variables = state
            (value, non_trainable), grads = gradient(trainable, non_trainable, images, labels)
            trainable, optimizer_variables = optimizer.stateless_apply(
                optimizer_variables, grads, trainable
            )
            return value, (trainable, non_trainable, optimizer_variables)

        optimizer_variables = [variable.value for variable in optimizer.variables]
        self.state = (trainable, non_trainable, optimizer_variables)
        self.step_function = jax.jit(train_step, donate_argnums=0)

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            if self.training:
                value, self.state = self.step_function(self.state, self.images, self.labels)
            else:
                value = self.step_function(self.state, self.images)
            self.jax.block_until_ready(value)
            times.append(time.perf_counter() - start)
        return times


def _bit_kind(training: bool, fused: bool):
    return type("BitJaxContender", (BitJax,), {"training": training, "fused": fused})


class Timm(Worker):
    """timm's resnetv2 BiT in PyTorch, eager or torch.compile'd, bfloat16 autocast."""

    training = False
    compiled = False

    def prepare(self):
        import timm
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        _, depth, width = parse_name(FLAGS.model)
        model = timm.create_model(f"resnetv2_{depth}x{width}_bit", num_classes=FLAGS.num_classes)
        model = model.to(self.device, memory_format=torch.channels_last)
        model.train(self.training)
        images = random_images(FLAGS.batch_size, FLAGS.image_size).transpose(0, 3, 1, 2)
        self.images = (torch.from_numpy(images.copy()) * 2 - 1).to(self.device)
        self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = (torch.arange(FLAGS.batch_size) % FLAGS.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
        self.model = torch.compile(model) if self.compiled else model
        self.dtype = torch.bfloat16 if FLAGS.precision == "bfloat16" else torch.float32

    def step(self):
        torch = self.torch
        autocast = torch.autocast(
            self.device, dtype=self.dtype, enabled=self.dtype != torch.float32
        )
        if not self.training:
            with torch.inference_mode(), autocast:
                return self.model(self.images)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = self.model(self.images)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()
        return loss

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return times


def _timm_kind(training: bool, compiled: bool):
    return type("TimmContender", (Timm,), {"training": training, "compiled": compiled})


WORKERS = {
    "bit_tf.jax.inference": _bit_kind(False, True),
    "bit_tf.jax.train": _bit_kind(True, True),
    "bit_tf.jax_keras_gn.inference": _bit_kind(False, False),
    "bit_tf.jax_keras_gn.train": _bit_kind(True, False),
    "timm.eager.inference": _timm_kind(False, False),
    "timm.eager.train": _timm_kind(True, False),
    "timm.compile.inference": _timm_kind(False, True),
    "timm.compile.train": _timm_kind(True, True),
}


def device_name() -> str:
    """The GPU's name from nvidia-smi, or "CPU" when there is none."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip().splitlines()[0]
    return "CPU (no GPU found)"


def report(results: dict, flops: float) -> tuple[str, dict]:
    """The Markdown table, and the figures for the data file: per contender its kind, median
    seconds per step, images/s (median, min, max), TFLOP/s and the ratios against timm compiled
    and eager; and the device."""
    device = device_name()
    lines = [
        f"# BiT GPU benchmark: {FLAGS.model}, {FLAGS.image_size}x{FLAGS.image_size}, "
        f"batch {FLAGS.batch_size}, {FLAGS.precision}, on {device}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        + "; ".join(
            f"{key} {value}"
            for key, value in versions(("keras", "jax", "jaxlib", "torch", "timm")).items()
        ),
        "",
        "| contender | images/s (median) | min-max | vs timm compile | vs timm eager | TFLOP/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def median_rate(name):
        result = results.get(name, {})
        if not result.get("times"):
            return None
        return statistics.median(FLAGS.batch_size / seconds for seconds in result["times"])

    contenders = {}
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error']} | | | | |")
            contenders[name] = {"error": result["error"]}
            continue
        rates = [FLAGS.batch_size / seconds for seconds in result["times"]]
        median = statistics.median(rates)
        kind = name.rsplit(".", 1)[1]
        ratios = []
        for peer in (f"timm.compile.{kind}", f"timm.eager.{kind}"):
            peer_rate = median_rate(peer)
            ratios.append(median / peer_rate if peer_rate and peer != name else None)
        achieved = median * flops * (3 if kind == "train" else 1) / 1e12
        cells = ["" if ratio is None else f"{ratio:.2f}x" for ratio in ratios]
        lines.append(
            f"| {name} | {median:.0f} | {min(rates):.0f}-{max(rates):.0f} | {cells[0]} | "
            f"{cells[1]} | {achieved:.1f} |"
        )
        contenders[name] = {
            "kind": kind,
            "median_seconds_per_step": statistics.median(result["times"]),
            "images_per_second": {"median": median, "min": min(rates), "max": max(rates)},
            "tflops": achieved,
            "vs_timm_compile": ratios[0],
            "vs_timm_eager": ratios[1],
        }
    numbers = {
        "device": device,
        "forward_gflop_per_image": flops / 1e9,
        "contenders": contenders,
    }
    return "\n".join(lines), numbers


def check_against_fixtures(folder: str) -> str:
    """The R14 fixture's logits on this machine's JAX device vs the authors' reference, with
    bit_tf's fused kernels on and off, and the two GroupNorms' gradients against each other.
    Runs in a worker process of its own; returns a Markdown paragraph."""
    import subprocess
    import sys

    code = f"""
import os, numpy as np
os.environ["KERAS_BACKEND"] = "jax"
import jax, keras
import bit_tf
jax.config.update("jax_default_matmul_precision", "highest")
folder = {folder!r}
reference = np.load(os.path.join(folder, "bit_r14x1_reference_outputs.npz"))
checkpoint = os.path.join(folder, "bit_r14x1_official.npz")
def error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
gradients = {{}}
for fused in (True, False):
    bit_tf.kernels.configure(fused=fused)
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    bit_tf.load_official_weights(model, checkpoint)
    logits = model.predict(reference["images"], verbose=0)
    print(f"fused={{fused}} device={{jax.devices()[0].device_kind}} "
          f"logits relative error {{error(logits, reference['logits']):.2e}}")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    def loss(trainable, images):
        out = model.stateless_call(trainable, non_trainable, images, training=True)[0]
        return keras.ops.sum(keras.ops.square(out))
    gradients[fused] = jax.jit(jax.grad(loss))(trainable, reference["images"])
worst = max(error(a, b) for a, b in zip(gradients[True], gradients[False]))
print(f"gradients fused vs Keras GroupNorm: worst relative error {{worst:.2e}}")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0:
        lines.append(f"check failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return "Correctness (float32, highest matmul precision): " + "; ".join(lines)


def driver_main() -> None:
    unavailable = {
        name: f"{package} is not installed"
        for name in WORKERS
        for package in (("jax",) if name.startswith("bit_tf") else ("torch", "timm"))
        if importlib.util.find_spec(package) is None
    }
    flops = forward_flops(FLAGS.model, FLAGS.image_size, FLAGS.num_classes)
    check = ""
    if FLAGS.check_fixtures:
        check = check_against_fixtures(FLAGS.check_fixtures)
        print(check, flush=True)

    def gpu_report(results):
        text, numbers = report(results, flops)
        if check:
            text += f"\n\n{check}"
            numbers["correctness_check"] = check
        return text, numbers

    benchmark(
        __file__,
        WORKERS,
        ("precision",),
        unavailable,
        gpu_report,
        label=f"gpu-{FLAGS.precision}",
    )


def main(argv) -> None:
    del argv
    if FLAGS.worker:
        serve(WORKERS[FLAGS.worker]())
    else:
        driver_main()


if __name__ == "__main__":
    app.run(main)
