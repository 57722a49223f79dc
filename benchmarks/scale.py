"""Memory and time against the size of the data: fine-tuning, distillation, evaluation, and more.

Three parts, each measured in processes of their own:

- `sizes`: peak resident memory (the child's `ru_maxrss`) and wall time of each contender on
  generated class folders of small JPEGs (12 classes, 128x128, a few KB each) of increasing
  size. Contenders: `finetune` (bit-finetune, 2 steps of batch 8, resize 224, crop 32: the
  pipeline works at 224 pixels, the model at 32 so the steps stay short), `distill`
  (bit-distill, 2 steps, crop 32, a small teacher written once), `evaluate`
  (`bit_tf.data.eval_pipeline` at 128 pixels through `model.evaluate`, as bit-finetune's final
  evaluation), and `predict` (bit-predict on the folder's files; not run by default: it
  answers 0.1 s per file). `CONTENDERS` maps a name to the function that builds its command;
  add one there.
- `step_memory`: peak resident memory of real training steps (`bit_tf.finetune`, float32)
  against model, batch and resolution, and the estimate of `bit_tf.training.micro_batch` for each.
- `throughput`: images per second of the train pipeline alone (decode, resize, crop, flip,
  MixUp), and the growth of its peak resident memory, on folders of small, 3- and
  12-megapixel JPEGs (with and without reduced-scale JPEG decoding), against the training
  step of BiT-S-R50x1 at the same crop; and decoding smooth and textured photos whole and at
  a reduced scale (`bit_tf.data.image_folder.decode_for_pipeline`): speed, and how far apart the
  resized images are.

`--code=PATH` runs the contenders of `sizes` against another checkout (its bit_tf and bit_cli
through PYTHONPATH), e.g. the main branch for a before-curve. A contender is stopped when its
resident memory passes `--max_rss_gib`, and recorded as stopped.

    python benchmarks/scale.py                                   # all parts, default sizes
    python benchmarks/scale.py --parts=sizes --sizes=250,1000,4000,16000
    python benchmarks/scale.py --parts=sizes --sizes=250,1000,2000 --code=../main --label=before
    python benchmarks/scale.py --plot_with=benchmarks/results/<before>.json   # both curves
    python benchmarks/scale.py --quick                           # smallest run, no data file

Writes benchmarks/results/<UTC time>-scale[-label].json and a plot beside it (.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness  # noqa: E402  (kept free of TensorFlow: each measurement is a process of its own)

CLASSES = 12
IMAGE_SIDE = 128
PHOTO_SIZE = (2016, 1512)  # a 3-megapixel photo, for the throughput part
PHONE_PHOTO_SIZE = (4032, 3024)  # a 12-megapixel phone photo


# --- Generated data ---------------------------------------------------------------------------


def write_folder(root: str, count: int, side: int = IMAGE_SIDE, size=None) -> str:
    """`count` JPEGs in CLASSES class folders, class by class; smooth random images (a few KB
    each at 128x128). Reuses a folder already written."""
    import numpy as np
    from PIL import Image

    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return root
    generator = np.random.default_rng(count)
    width, height = size or (side, side)
    for index in range(count):
        label = index * CLASSES // count
        folder = os.path.join(root, f"class{label:02d}")
        os.makedirs(folder, exist_ok=True)
        coarse = generator.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        image.save(os.path.join(folder, f"{index:06d}.jpg"), quality=85)
    open(marker, "w").close()
    return root


def write_teacher(path: str, code: str | None) -> str:
    """A small classifier of CLASSES classes saved as .keras, the teacher of `distill`."""
    if os.path.exists(path):
        return path
    script = textwrap.dedent(
        f"""
        import bit_tf
        model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic",
                                 num_classes={CLASSES}, name="teacher")
        model.save({path!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], env=_environment(code), check=True)
    return path


# --- Contenders of the `sizes` part -----------------------------------------------------------

EVALUATE = textwrap.dedent(
    """
    import sys
    import bit_tf
    from bit_tf.data import pipelines as data
    source = data.from_folder(sys.argv[1])
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic",
                             num_classes=source.num_classes)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    model.evaluate(data.eval_pipeline(source, 64, 128), verbose=0)
    """
)


def finetune_command(folder: str, work: str, teacher: str) -> list[str]:
    return [
        "-m",
        "bit_cli.finetune",
        f"--dataset={folder}",
        f"--export_dir={os.path.join(work, 'finetune')}",
        "--steps=2",
        "--batch_size=8",
        "--resize=224",
        "--crop=32",
        "--validation_every=2",
        "--validation_fraction=0.2",
        "--overwrite",
    ]


def distill_command(folder: str, work: str, teacher: str) -> list[str]:
    return [
        "-m",
        "bit_cli.distill",
        f"--teacher={teacher}",
        "--student=BiT-S-R18x1",
        f"--dataset={folder}",
        f"--export_dir={os.path.join(work, 'distill')}",
        "--steps=2",
        "--batch_size=8",
        "--crop=32",
        "--validation_every=2",
        "--validation_fraction=0.2",
        "--overwrite",
    ]


def evaluate_command(folder: str, work: str, teacher: str) -> list[str]:
    return ["-c", EVALUATE, folder]


def predict_command(folder: str, work: str, teacher: str) -> list[str]:
    files = sorted(
        os.path.join(directory, name)
        for directory, _, names in os.walk(folder)
        for name in names
        if name.endswith(".jpg")
    )
    return ["-m", "bit_cli.predict", f"--model={teacher}", "--image_size=32", *files]


#: name -> (folder, work folder, teacher) -> the arguments of `python`.
CONTENDERS = {
    "finetune": finetune_command,
    "distill": distill_command,
    "evaluate": evaluate_command,
    "predict": predict_command,
}
DEFAULT_CONTENDERS = ("finetune", "distill", "evaluate")


def _environment(code: str | None) -> dict:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    environment["PYTHONPATH"] = os.path.abspath(code or REPOSITORY)
    return environment


def measure(arguments: list[str], code: str | None, max_rss: int, cwd: str) -> dict:
    """Runs `python <arguments>`; its wall time, peak resident memory and status, stopped
    (SIGKILL) when its resident memory passes `max_rss` bytes."""
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, *arguments],
        env=_environment(code),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = threading.Event()

    def watch():
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/statm") as handle:
                    resident = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                return
            if resident > max_rss:
                stopped.set()
                process.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr_tail = process.stderr.read()[-2000:]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    return {
        "seconds": round(time.time() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "returncode": process.returncode,
        "stopped_over_max_rss": stopped.is_set(),
        **({"stderr_tail": stderr_tail} if process.returncode else {}),
    }


def sizes_part(arguments, work: str) -> dict:
    teacher = write_teacher(os.path.join(work, "teacher.keras"), arguments.code)
    results = {name: [] for name in arguments.contenders}
    for size in arguments.sizes:
        folder = write_folder(os.path.join(work, f"folder-{size}"), size)
        for name in arguments.contenders:
            command = CONTENDERS[name](folder, work, teacher)
            result = measure(command, arguments.code, arguments.max_rss_gib * 2**30, work)
            results[name].append({"images": size, **result})
            print(
                f"{name:9s} {size:6d} images: {result['peak_rss_mib']:8.1f} MiB peak, "
                f"{result['seconds']:7.1f} s, status {result['returncode']}",
                flush=True,
            )
    return results


# --- The step_memory part ---------------------------------------------------------------------

STEP = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import bit_tf
    from bit_tf.finetune.recipe import finetune

    name, batch, resolution = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def resident():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    images = np.random.default_rng(0).integers(0, 256, (2 * batch, resolution, resolution, 3),
                                               dtype=np.uint8)
    labels = np.arange(2 * batch) % 10
    before = resident()
    finetune(name, (images, labels), batch_size=batch, steps=3, resize=resolution,
             crop=resolution, jit_compile=False, verbose=0, validation_every=3, seed=0,
             gradient_accumulation_steps=1)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    print(json.dumps({"growth_bytes": peak - before}))
    """
)
STEP_POINTS = (
    ("BiT-S-R26x1", 4, 128),
    ("BiT-S-R26x1", 16, 128),
    ("BiT-S-R50x1", 4, 128),
    ("BiT-S-R50x1", 16, 128),
    ("BiT-S-R50x1", 4, 224),
    ("BiT-S-R50x1", 8, 224),
    ("BiT-S-R50x1", 8, 384),
)


def step_memory_part(arguments, work: str) -> list:
    sys.path.insert(0, REPOSITORY)
    from bit_tf.training.micro_batch import Architecture, training_bytes

    rows = []
    points = STEP_POINTS[:2] if arguments.quick else STEP_POINTS
    for name, batch, resolution in points:
        completed = subprocess.run(
            [sys.executable, "-c", STEP, name, str(batch), str(resolution)],
            env=_environment(None),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if completed.returncode:
            rows.append({"model": name, "batch": batch, "error": completed.stderr[-2000:]})
            continue
        growth = json.loads(completed.stdout.splitlines()[-1])["growth_bytes"]
        estimate = training_bytes(Architecture.from_name(name, 10), batch, resolution, "float32")
        rows.append(
            {
                "model": name,
                "batch": batch,
                "resolution": resolution,
                "measured_mib": round(growth / 2**20, 1),
                "estimate_mib": round(estimate / 2**20, 1),
            }
        )
        print(f"{name} batch {batch} at {resolution}: {rows[-1]}", flush=True)
    return rows


# --- The throughput part ----------------------------------------------------------------------

THROUGHPUT = textwrap.dedent(
    """
    import json, sys, time
    import bit_tf
    from bit_tf.data import pipelines as data

    folder, resize, crop, batches, reduced = sys.argv[1], *map(int, sys.argv[2:6])

    def high_water_mark():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmHWM"))

    source = data.from_folder(folder)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = high_water_mark()
    pipeline = data.train_pipeline(source, 32, resize, crop, mixup_alpha=0.1, seed=0,
                                   reduced_scale_decoding=bool(reduced))
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    started = time.time()
    for _ in range(batches):
        next(iterator)
    print(json.dumps({"images_per_second": 32 * batches / (time.time() - started),
                      "peak_growth_mib": (high_water_mark() - before) / 2**20}))
    """
)
# Photos decoded whole and at a reduced scale (both resized to 448 as the pipeline does): time
# per image, and how far apart the resized images are; for the folder's smooth photos and for
# textured ones (fine noise: the case where a resize without anti-aliasing aliases), next to how
# far an anti-aliased resize is from the default one.
DECODE = textwrap.dedent(
    """
    import glob, io, json, sys, time
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from bit_tf.data import image_folder

    def textured(seed):
        generator = np.random.default_rng(seed)
        coarse = generator.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((2016, 1512), Image.BICUBIC))
        pixels = smooth + generator.normal(0, 25, smooth.shape)
        encoded = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(encoded, "JPEG",
                                                                       quality=90)
        return encoded.getvalue()

    def resized(image, antialias=False):
        image = tf.cast(image, tf.float32) / 65535.0
        return tf.image.resize(image, (448, 448), antialias=antialias).numpy()

    files = sorted(glob.glob(sys.argv[1] + "/*/*.jpg"))[:16]
    sets = {"smooth": [open(path, "rb").read() for path in files],
            "textured": [textured(seed) for seed in range(4)]}
    results = {}
    for kind, encoded in sets.items():
        images = {}
        for name, size in (("whole", 0), ("reduced", 448)):
            started = time.time()
            images[name] = [image_folder.decode_for_pipeline(data, image_folder.MAX_PIXELS,
                                                             size) for data in encoded]
            results[f"{kind}_{name}_images_per_second"] = len(encoded) / (time.time() - started)
            results[f"{kind}_{name}_shape"] = list(images[name][0].shape)
        whole = np.stack([resized(image) for image in images["whole"]])
        reduced = np.stack([resized(image) for image in images["reduced"]])
        antialiased = np.stack([resized(image, True) for image in images["whole"]])
        results[f"{kind}_mean_absolute_difference"] = float(np.abs(whole - reduced).mean())
        results[f"{kind}_antialias_mean_absolute_difference"] = float(
            np.abs(whole - antialiased).mean())
        results[f"{kind}_reduced_to_antialiased"] = float(np.abs(reduced - antialiased).mean())
    print(json.dumps(results))
    """
)
TRAIN_STEP = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import bit_tf
    from bit_tf.finetune.recipe import finetune
    import keras

    name, crop, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    images = np.random.default_rng(0).integers(0, 256, (64, crop, crop, 3), dtype=np.uint8)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.time()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.time() - self.started)

    finetune(name, (images, np.arange(64) % 10), batch_size=16, steps=steps + 2, resize=crop,
             crop=crop, jit_compile=False, verbose=0, seed=0, callbacks=[Clock()],
             gradient_accumulation_steps=1, validation_every=steps + 2)
    print(json.dumps({"images_per_second": 16 / float(np.median(times[2:]))}))
    """
)


def _child_json(script: str, *arguments) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)],
        env=_environment(None),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if completed.returncode:
        return {"error": completed.stderr[-1500:]}
    return json.loads(completed.stdout.splitlines()[-1])


def throughput_part(arguments, work: str) -> list:
    rows = []
    small = write_folder(os.path.join(work, "throughput-small"), 480)
    photos = write_folder(os.path.join(work, "throughput-photos"), 96, size=PHOTO_SIZE)
    phone = write_folder(os.path.join(work, "throughput-12mp"), 48, size=PHONE_PHOTO_SIZE)
    batches = 4 if arguments.quick else 20
    for label, folder, resize, crop, reduced in (
        ("train pipeline, 128x128 JPEGs, resize 160, crop 128, MixUp", small, 160, 128, 1),
        ("train pipeline, 3-megapixel JPEGs, resize 448, crop 384, MixUp", photos, 448, 384, 1),
        ("the same, every JPEG decoded whole", photos, 448, 384, 0),
        ("train pipeline, 12-megapixel JPEGs, resize 448, crop 384, MixUp", phone, 448, 384, 1),
        ("the same, every JPEG decoded whole", phone, 448, 384, 0),
    ):
        speed = _child_json(THROUGHPUT, folder, resize, crop, batches, reduced)
        rows.append({"case": label, **speed})
        print(rows[-1], flush=True)
    rows.append({"case": "decoding 3-megapixel JPEGs for 448", **_child_json(DECODE, photos)})
    print(rows[-1], flush=True)
    for crop in (128,) if arguments.quick else (128, 384):
        steps = 2 if arguments.quick else 4
        label = f"training step, BiT-S-R50x1 at {crop}, batch 16, float32"
        rows.append({"case": label, **_child_json(TRAIN_STEP, "BiT-S-R50x1", crop, steps)})
        print(rows[-1], flush=True)
    return rows


# --- Plot and main ----------------------------------------------------------------------------


def plot(run: dict, path: str, before: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for record, style, tag in ((before, "--", "before"), (run, "-", "after")):
        if not record or "sizes" not in record.get("results", {}):
            continue
        for name, points in record["results"]["sizes"].items():
            points = [point for point in points if point["returncode"] == 0]
            if not points:
                continue
            images = [point["images"] for point in points]
            memory_axis.plot(
                images,
                [p["peak_rss_mib"] for p in points],
                style,
                marker="o",
                label=f"{name} ({tag})",
            )
            time_axis.plot(
                images, [p["seconds"] for p in points], style, marker="o", label=f"{name} ({tag})"
            )
    for axis, title in ((memory_axis, "peak resident memory (MiB)"), (time_axis, "wall time (s)")):
        axis.set_xscale("log")
        axis.set_xlabel("images in the folder")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    memory_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _commit_of(checkout: str) -> str | None:
    """The commit of the checkout `--code` names (None outside git)."""
    completed = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return completed.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="sizes,step_memory,throughput")
    parser.add_argument("--sizes", default="250,1000,4000,16000")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS))
    parser.add_argument("--code", default=None, help="checkout whose bit_tf the contenders run")
    parser.add_argument("--label", default="", help="added to the data file's name")
    parser.add_argument("--max_rss_gib", type=float, default=6.0)
    parser.add_argument("--work_dir", default=None, help="where the folders are generated")
    parser.add_argument("--plot_with", default=None, help="an earlier data file, drawn dashed")
    parser.add_argument("--results_dir", default=None)
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    arguments.parts = [part for part in arguments.parts.split(",") if part]
    arguments.sizes = [int(size) for size in arguments.sizes.split(",")]
    arguments.contenders = arguments.contenders.split(",")
    unknown = [name for name in arguments.contenders if name not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {sorted(CONTENDERS)}")
    if arguments.quick:
        arguments.sizes = arguments.sizes[:1] if arguments.sizes else [60]
    started = time.time()
    measured_code = {"git": harness.git_commit()}  # the commit measured, not the one at the end
    if arguments.code:
        measured_code["code_git"] = _commit_of(arguments.code)
    work = arguments.work_dir or tempfile.mkdtemp(prefix="bit-tf-scale-")
    os.makedirs(work, exist_ok=True)
    results = {}
    try:
        if "sizes" in arguments.parts:
            results["sizes"] = sizes_part(arguments, work)
        if "step_memory" in arguments.parts:
            results["step_memory"] = step_memory_part(arguments, work)
        if "throughput" in arguments.parts:
            results["throughput"] = throughput_part(arguments, work)
    finally:
        if not arguments.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    run = {
        "schema": "bit_tf-scale/1",
        "benchmark": "scale",
        "command": " ".join(sys.argv),
        "code": os.path.abspath(arguments.code) if arguments.code else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **measured_code,
        "machine": harness.machine(),
        "versions": harness.versions(("tensorflow", "keras", "numpy", "pillow")),
        "results": results,
    }
    folder = arguments.results_dir
    if folder is None and not arguments.quick:
        folder = os.path.join(HERE, "results")
    if folder:
        label = "scale" + (f"-{arguments.label}" if arguments.label else "")
        path = harness.write_results(folder, label, run, started)
        print(f"wrote {path}")
        if "sizes" in results:
            before = None
            if arguments.plot_with:
                with open(arguments.plot_with) as handle:
                    before = json.load(handle)
            plot(run, path[: -len(".json")] + ".png", before)
            print(f"wrote {path[: -len('.json')]}.png")


if __name__ == "__main__":
    main()
