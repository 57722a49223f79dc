"""Images per second of BiT on the CPU: this package as users call it, against timm, side by side.

Every contender runs in a worker process of its own (so each framework gets the same threads and
its own memory high-water mark); the driver alternates them, repetition after repetition, and
prints medians, ratios against timm, the achieved GFLOP/s against a float32 matmul peak measured
in the same run, and the versions.

    python benchmarks/cpu.py                        # BiT-R50x1, 128x128, batch 16, 5 repeats
    python benchmarks/cpu.py --quick                # one repetition, to check that it runs
    python benchmarks/cpu.py --output=benchmarks/latest.md
    python benchmarks/cpu.py --quick --results_dir=/tmp/bench   # a quick run's data file too
    python benchmarks/cpu.py --dtype=mixed_bfloat16 # bfloat16 compute (timm under autocast)

Contenders: `bit_tf.predict` (model.predict), `bit_tf.predict_folded` (model.predict of the
inference copy from `bit_tf.models.inference.fold_weight_standardization`), `bit_tf.serving` (the
serving SavedModel of
hub_export: JPEG bytes in, top-k out), `bit_tf.finetune` (the `model.fit` path of
bit_tf.finetune, one optimizer step), `timm.eager` inference and training step (when torch and
timm are installed). Not a test: timings on shared machines are noisy, so read the ratios.

Every run but a --quick one also writes its raw figures to
benchmarks/results/<UTC time>-cpu-<dtype>.json (--results_dir moves it; '' writes none): the
command and flags, time, git commit, CPU, versions and compiler, the matmul peak, and per
contender every step's seconds by repeat, the medians, images/s, GFLOP/s, memory in bytes and
the ratio against timm. benchmarks/RESULTS.md describes the fields.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from harness import (  # noqa: E402
    MEMORY_KINDS,
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
    image_size=128,
    batch_size=16,
    steps_per_repeat=3,
    warmup=2,
    contenders=(
        "bit_tf.predict,bit_tf.predict_folded,bit_tf.serving,bit_tf.finetune,"
        "timm.inference,timm.train"
    ),
)
flags.DEFINE_integer("threads", 2, "Intra-op threads for every framework.")
flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "mixed_bfloat16"],
    "Keras dtype policy of bit_tf's models; mixed_bfloat16 runs timm under "
    "torch.autocast(bfloat16) and measures a bfloat16 matmul peak.",
)

TRAINING = {"bit_tf.finetune", "timm.train"}
PEER = {"inference": "timm.inference", "train": "timm.train"}


# ----------------------------------------------------------------------------- workers


class BitPredict(Worker):
    def prepare(self):
        import bit_tf

        self.model = bit_tf.create_model(
            FLAGS.model, num_classes=FLAGS.num_classes, dtype=FLAGS.dtype
        )
        self.images = random_images(FLAGS.batch_size, FLAGS.image_size)

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.model.predict(self.images, batch_size=FLAGS.batch_size, verbose=0)
            times.append(time.perf_counter() - start)
        return times


class BitPredictFolded(BitPredict):
    """`model.predict` of the inference copy with weight standardization folded (users call
    `bit_tf.models.inference.fold_weight_standardization(model)` once, then predict with it)."""

    def prepare(self):
        super().prepare()
        from bit_tf.models.inference import fold_weight_standardization

        self.model = fold_weight_standardization(self.model)


class BitServing(Worker):
    def prepare(self):
        import tempfile

        import numpy as np
        import tensorflow as tf

        import bit_tf
        import hub_export

        model = bit_tf.create_model(FLAGS.model, num_classes=FLAGS.num_classes, dtype=FLAGS.dtype)
        rng = np.random.default_rng(0)
        model.get_layer("head").kernel.assign(
            rng.normal(0, 0.01, model.get_layer("head").kernel.shape).astype("float32")
        )
        self.folder = tempfile.TemporaryDirectory(prefix="bit-serving-")
        path = hub_export.export_serving(
            model, self.folder.name, version=1, image_size=FLAGS.image_size
        )
        self.signature = tf.saved_model.load(path).signatures["serving_default"]
        images = (random_images(FLAGS.batch_size, FLAGS.image_size) * 255).astype("uint8")
        self.jpegs = tf.constant([tf.io.encode_jpeg(image).numpy() for image in images])
        self.input_name = next(iter(self.signature.structured_input_signature[1]))

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            outputs = self.signature(**{self.input_name: self.jpegs})
            for value in outputs.values():
                value.numpy()
            times.append(time.perf_counter() - start)
        return times

    def close(self):
        self.folder.cleanup()


class BitFinetune(Worker):
    """Drives `bit_tf.finetune` (model.fit) in a thread, one optimizer step per release."""

    def prepare(self):
        import keras
        import numpy as np

        import bit_tf

        self.release = threading.Semaphore(0)
        self.durations: queue.Queue = queue.Queue()
        self.failure: list = []
        # Set when fit is about to run its first step: the model, its optimizer and the input
        # pipeline exist, as timm's model and optimizer do when its worker reports ready, so
        # both memory baselines are taken at the same point.
        self.built = threading.Event()
        images = random_images(FLAGS.batch_size * 4, FLAGS.image_size)
        # A head of --num_classes, as timm's: from the labels alone it would have 64 classes.
        source = bit_tf.data.from_arrays(
            images, np.arange(len(images)) % FLAGS.num_classes, num_classes=FLAGS.num_classes
        )
        worker = self

        class StepGate(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                worker.built.set()
                worker.release.acquire()
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                worker.durations.put(time.perf_counter() - self.start)

        total_steps = FLAGS.warmup + FLAGS.repeats * FLAGS.steps_per_repeat + 1

        def train():
            try:
                bit_tf.finetune(
                    FLAGS.model,
                    source,
                    batch_size=FLAGS.batch_size,
                    steps=total_steps,
                    resize=FLAGS.image_size,
                    crop=FLAGS.image_size,
                    mixup_alpha=0.0,
                    validation_every=total_steps,
                    dtype=FLAGS.dtype,
                    callbacks=[StepGate()],
                    verbose=0,
                )
            except Exception as error:  # reported to the driver, not swallowed
                worker.failure.append(repr(error))
                worker.durations.put(None)
                worker.built.set()

        self.thread = threading.Thread(target=train, daemon=True)
        self.thread.start()
        self.built.wait()
        if self.failure:
            raise RuntimeError(f"bit_tf.finetune failed: {self.failure}")
        import tensorflow as tf

        self.tf = tf
        try:  # TensorFlow's CPU allocator keeps statistics when oneDNN is on (bit_tf's default)
            tf.config.experimental.reset_memory_stats("CPU:0")
            self.tensors_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        except ValueError:
            self.tensors_before = None

    def tensor_peak_growth(self):
        if self.tensors_before is None:
            return None
        return self.tf.config.experimental.get_memory_info("CPU:0")["peak"] - self.tensors_before

    def run(self, steps):
        times = []
        for _ in range(steps):
            self.release.release()
            duration = self.durations.get()
            if duration is None:
                raise RuntimeError(f"bit_tf.finetune failed: {self.failure}")
            times.append(duration)
        return times

    def close(self):
        for _ in range(1000):
            self.release.release()


class TimmWorker(Worker):
    training = False

    def prepare(self):
        import timm
        import torch

        torch.set_num_threads(FLAGS.threads)
        self.torch = torch
        _, depth, width = parse_name(FLAGS.model)
        self.model = timm.create_model(
            f"resnetv2_{depth}x{width}_bit", pretrained=False, num_classes=FLAGS.num_classes
        )
        images = random_images(FLAGS.batch_size, FLAGS.image_size).transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(images.copy()) * 2 - 1
        self.labels = torch.arange(FLAGS.batch_size) % FLAGS.num_classes
        self.autocast = torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=FLAGS.dtype == "mixed_bfloat16"
        )
        if self.training:
            self.model.train()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.003, momentum=0.9)
        else:
            self.model.eval()

    def step(self):
        torch = self.torch
        if not self.training:
            with torch.inference_mode(), self.autocast:
                self.model(self.images)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            logits = self.model(self.images)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return times


class TimmTrain(TimmWorker):
    training = True


WORKERS = {
    "bit_tf.predict": BitPredict,
    "bit_tf.predict_folded": BitPredictFolded,
    "bit_tf.serving": BitServing,
    "bit_tf.finetune": BitFinetune,
    "timm.inference": TimmWorker,
    "timm.train": TimmTrain,
}


def configure_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(FLAGS.threads))
    if FLAGS.worker and FLAGS.worker.startswith("bit_tf"):
        # bit_tf first, as users import it: it turns TensorFlow's oneDNN kernels on, which
        # only works before TensorFlow itself is imported.
        importlib.import_module("bit_tf")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)


MATMUL_PROBE = """
import sys, time
size, threads, repeats, dtype = 2048, int(sys.argv[1]), 5, sys.argv[2]
try:
    import torch
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype)) for _ in range(2))
    multiply = lambda: torch.mm(a, b)
except ImportError:
    import numpy as np
    dtype = "float32"
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    multiply = lambda: a @ b
multiply()
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    multiply()
    best = min(best, time.perf_counter() - start)
print(2 * size**3 / best / 1e9, dtype)
"""


def matmul_peak_gflops(threads: int, dtype: str = "float32") -> tuple[float, str]:
    """The matmul rate of this machine with `threads` threads in `dtype` (torch's BLAS, else
    numpy's, which has float32 only), measured in a process of its own, and the dtype used."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    output = subprocess.run(
        [sys.executable, "-c", MATMUL_PROBE, str(threads), dtype],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate, used = output.strip().splitlines()[-1].split()
    return float(rate), used


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _mebibytes(count) -> str:
    return "n/a" if count is None else f"{count / 2**20:.0f} MiB"


def figures(results: dict, flops: float, peak: float, peak_dtype: str) -> dict:
    """What the report prints and the data file holds: per contender its kind, the median,
    fastest and slowest repeat in seconds per step and images/s, GFLOP/s, the share of the
    matmul peak, the ratio against timm's median (inference or training) and, for training,
    the memory figures in bytes (None where not measured) and the resident growth over timm's;
    the forward pass's GFLOP per image, the matmul peak, and the ratios against timm by name."""
    contenders = {}
    for name, result in results.items():
        if "error" in result:
            contenders[name] = {"error": result["error"]}
            continue
        kind = "train" if name in TRAINING else "inference"
        rates = [FLAGS.batch_size / seconds for seconds in result["times"]]
        median = statistics.median(rates)
        peer = results.get(PEER[kind], {})
        ratio = None
        if peer.get("times") and name != PEER[kind]:
            ratio = median / statistics.median(FLAGS.batch_size / s for s in peer["times"])
        achieved = median * flops * (3 if kind == "train" else 1) / 1e9
        entry = {
            "kind": kind,
            "median_seconds_per_step": statistics.median(result["times"]),
            "images_per_second": {"median": median, "min": min(rates), "max": max(rates)},
            "gflops": achieved,
            "percent_of_peak": 100 * achieved / peak,
            "vs_timm": ratio,
        }
        if kind == "train":
            entry["memory_bytes"] = {
                "rss_growth": result["rss_growth"],
                "steady_rss_growth": result["steady_rss_growth"],
                "tensor_peak_growth": result.get("tensor_peak_growth"),
                "growth_by_kind": result.get("growth_by_kind"),
            }
        contenders[name] = entry
    timm_memory = contenders.get("timm.train", {}).get("memory_bytes", {}).get("rss_growth")
    if timm_memory:
        for name in TRAINING - {"timm.train"}:
            if "memory_bytes" in contenders.get(name, {}):
                growth = contenders[name]["memory_bytes"]["rss_growth"]
                contenders[name]["memory_vs_timm"] = growth / timm_memory
    return {
        "forward_gflop_per_image": flops / 1e9,
        "matmul_peak": {
            "gflops": peak,
            "dtype": peak_dtype,
            "size": 2048,
            "threads": FLAGS.threads,
        },
        "contenders": contenders,
        "vs_timm": {
            name: entry["vs_timm"]
            for name, entry in contenders.items()
            if entry.get("vs_timm") is not None
        },
    }


def report(results: dict, figures: dict, info: dict) -> str:
    flops = figures["forward_gflop_per_image"] * 1e9
    peak, peak_dtype = figures["matmul_peak"]["gflops"], figures["matmul_peak"]["dtype"]
    lines = [
        f"# BiT CPU benchmark: {FLAGS.model}, {FLAGS.image_size}x{FLAGS.image_size}, "
        f"batch {FLAGS.batch_size}, {FLAGS.dtype}, {FLAGS.threads} threads",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        + "; ".join(f"{key} {value}" for key, value in info.items()),
        f"{peak_dtype} matmul peak (2048x2048, {FLAGS.threads} threads): {peak:.1f} GFLOP/s; "
        f"forward pass: {flops / 1e9:.2f} GFLOP per image",
        "",
        "| contender | images/s (median) | min-max | vs timm | GFLOP/s | % of peak | "
        "training memory growth: all steps | after warm-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in figures["contenders"].items():
        if "error" in entry:
            lines.append(f"| {name} | failed: {entry['error']} | | | | | | |")
            continue
        rates = entry["images_per_second"]
        ratio = "" if entry["vs_timm"] is None else f"{entry['vs_timm']:.2f}x"
        memory = steady = ""
        if entry["kind"] == "train":
            memory = _mebibytes(entry["memory_bytes"]["rss_growth"])
            steady = _mebibytes(entry["memory_bytes"]["steady_rss_growth"])
        lines.append(
            f"| {name} | {rates['median']:.1f} | {rates['min']:.1f}-{rates['max']:.1f} | "
            f"{ratio} | {entry['gflops']:.1f} | {entry['percent_of_peak']:.0f}% | {memory} | "
            f"{steady} |"
        )
    lines += [
        "",
        "Training GFLOP/s count the backward pass as twice the forward pass. Memory: the growth "
        "of the worker's resident high-water mark over its resident size just before the first "
        "step, over all steps, and over the timed steps only (high-water mark reset after "
        "warm-up, so tracing and compilation in the first steps do not count there).",
    ]
    if FLAGS.dtype != "float32" and "bit_tf.serving" in results:
        lines.append(
            f"bit_tf.serving computes in float32 whatever --dtype says ({FLAGS.dtype} here): "
            "the serving export holds the official float32 graph."
        )
    return "\n".join(lines + memory_by_kind(results))


def memory_by_kind(results: dict) -> list[str]:
    """A table of where each training contender's resident memory grew (harness.MEMORY_KINDS)."""
    rows = [
        (name, result)
        for name, result in results.items()
        if name in TRAINING and result.get("growth_by_kind")
    ]
    if not rows:
        return []
    lines = [
        "",
        "Where the training memory is: the resident growth after the last step, over the same "
        "baseline, by kind of mapping, and the peak of the framework's own tensor allocator "
        "over its use before the first step (TensorFlow's statistics; torch keeps none on the "
        "CPU).",
        "",
        "| contender | tensors at peak | " + " | ".join(MEMORY_KINDS) + " | all resident growth |",
        "| --- | --- | " + " | ".join("---" for _ in MEMORY_KINDS) + " | --- |",
    ]
    for name, result in rows:
        kinds = result["growth_by_kind"]
        cells = [_mebibytes(result.get("tensor_peak_growth"))]
        cells += [_mebibytes(kinds[kind]) for kind in MEMORY_KINDS]
        cells.append(_mebibytes(sum(kinds.values())))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def driver_main() -> None:
    unavailable = {}
    if importlib.util.find_spec("timm") is None:
        unavailable = {name: "timm is not installed (pip install timm)" for name in WORKERS}
        unavailable = {name: why for name, why in unavailable.items() if name.startswith("timm")}

    def cpu_report(results):
        flops = forward_flops(FLAGS.model, FLAGS.image_size, FLAGS.num_classes)
        peak_dtype = "bfloat16" if FLAGS.dtype == "mixed_bfloat16" else "float32"
        peak, peak_dtype = matmul_peak_gflops(FLAGS.threads, peak_dtype)
        numbers = figures(results, flops, peak, peak_dtype)
        return report(results, numbers, versions()), numbers

    benchmark(
        __file__,
        WORKERS,
        ("threads", "dtype"),
        unavailable,
        cpu_report,
        label=f"cpu-{FLAGS.dtype}",
    )


def main(argv) -> None:
    del argv
    if FLAGS.worker:
        configure_threads()
        serve(WORKERS[FLAGS.worker]())
    else:
        driver_main()


if __name__ == "__main__":
    app.run(main)
