"""What the benchmark scripts share: worker processes driven over JSON lines, FLOP counts,
memory high-water marks, the versions of the contenders, and the data file of each run
(`write_results`: benchmarks/results/<UTC time>-<script>-<dtype>.json).

Kept free of imports of TensorFlow, JAX and torch: each worker process imports only its own
framework (torch and TensorFlow in one process can crash).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The high-water mark of this process's resident memory (VmHWM where Linux has it)."""
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Resets the high-water mark to the resident size now (Linux 4.0+); False where it can't.

    The warm-up steps (tracing, compilation, first allocations) set a high-water mark of their
    own; resetting after them lets the timed steps report the peak that training keeps hitting.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


MEMORY_KINDS = ("large anonymous", "heap", "other anonymous", "file-backed")
LARGE_MAPPING_BYTES = 64 * 2**20


def resident_by_kind() -> dict[str, int]:
    """Resident bytes of this process by the kind of memory mapping (from /proc/self/smaps).

    - "large anonymous": anonymous mappings over 64 MiB: the regions of TensorFlow's tensor
      allocator (glibc never makes a thread arena larger than 64 MiB);
    - "heap": glibc's main heap ([heap]), where the main thread's malloc lands;
    - "other anonymous": the rest of the anonymous memory: glibc's per-thread arenas, thread
      stacks, JIT-compiled code;
    - "file-backed": pages of mapped files, mostly the libraries' code as it is first used.

    Empty where the system has no /proc/self/smaps.

    Example:
        >>> sorted(resident_by_kind()) == sorted(MEMORY_KINDS)  # on Linux
        True
    """
    if not os.path.exists("/proc/self/smaps"):
        return {}
    totals = dict.fromkeys(MEMORY_KINDS, 0)
    kind = None
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
                start, end = (int(value, 16) for value in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif name.startswith("/"):
                    kind = "file-backed"
                elif not name and end - start > LARGE_MAPPING_BYTES:
                    kind = "large anonymous"
                else:
                    kind = "other anonymous"
            elif fields[0] == "Rss:" and kind is not None:
                totals[kind] += int(fields[1]) * 1024
    return totals


# Kept free of imports of TensorFlow: torch and TensorFlow in one process can crash.
UNITS_PER_BLOCK = {
    18: (2, 2, 2, 2),
    26: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def parse_name(name: str) -> tuple[str, int, int]:
    match = re.fullmatch(r"BiT-([SML])-R(\d+)x(\d+)", name)
    if not match or int(match.group(2)) not in UNITS_PER_BLOCK:
        raise ValueError(f"--model must name a BiT model like BiT-S-R50x1, got {name!r}.")
    return match.group(1), int(match.group(2)), int(match.group(3))


def model_architecture(name: str):
    _, depth, width = parse_name(name)
    return UNITS_PER_BLOCK[depth], width, depth in (18, 34)


def forward_flops(name: str, image_size: int, num_classes: int) -> float:
    """Multiply-adds x 2 of one image's forward pass, counted from the architecture."""
    units_per_block, width, basic = model_architecture(name)
    macs = 0
    size = (image_size + 6 - 7) // 2 + 1
    channels = 64 * width
    macs += size * size * 7 * 7 * 3 * channels
    size = (size + 2 - 3) // 2 + 1
    for block, units in enumerate(units_per_block):
        middle = 64 * width * 2**block
        out = middle if basic else 4 * middle
        for unit in range(units):
            stride = 2 if (block > 0 and unit == 0) else 1
            out_size = (size - 1) // stride + 1
            if stride != 1 or channels != out:
                macs += out_size * out_size * channels * out
            if basic:
                macs += out_size * out_size * 9 * channels * middle
                macs += out_size * out_size * 9 * middle * middle
            else:
                macs += size * size * channels * middle
                macs += out_size * out_size * 9 * middle * middle
                macs += out_size * out_size * middle * out
            channels, size = out, out_size
    macs += channels * num_classes
    return 2.0 * macs


def random_images(batch: int, size: int):
    import numpy as np

    return np.random.default_rng(0).uniform(size=(batch, size, size, 3)).astype("float32")


class Worker:
    """One contender: `prepare()` once, then `run(steps)` returns seconds per step."""

    def prepare(self) -> None:
        raise NotImplementedError

    def run(self, steps: int) -> list[float]:
        raise NotImplementedError

    def tensor_peak_growth(self) -> int | None:
        """Peak bytes of the framework's tensor allocator over its use before the first step,
        where the framework keeps such statistics (None where not)."""
        return None

    def close(self) -> None:
        pass


def start_worker(script: str, name: str, arguments: list[str]) -> subprocess.Popen:
    """Starts `script --worker=name ARGUMENTS` and waits for it to report ready."""
    argv = [sys.executable, os.path.abspath(script), f"--worker={name}", *arguments]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    reply = read_reply(process, name)
    if not reply.get("ready"):
        raise RuntimeError(f"worker {name} did not start: {reply}")
    return process


def serve(worker: Worker) -> None:
    """The worker side: prepare, then answer {"steps": n} lines with timings until stopped."""
    worker.prepare()
    baseline = rss_bytes()
    baseline_by_kind = resident_by_kind()
    print(json.dumps({"ready": True}), flush=True)
    overall_peak, peak_was_reset = 0, False
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("stop"):
            break
        times = worker.run(request["steps"])
        peak = peak_rss_bytes()
        overall_peak = max(overall_peak, peak)
        reply = {
            "times": times,
            "rss_growth": max(0, overall_peak - baseline),
            # The peak of the steps after the first request (the warm-up), over the same baseline.
            "steady_rss_growth": max(0, peak - baseline) if peak_was_reset else None,
            # Where the resident memory grew since that baseline, now, after these steps.
            "growth_by_kind": {
                kind: size - baseline_by_kind[kind] for kind, size in resident_by_kind().items()
            },
            "tensor_peak_growth": worker.tensor_peak_growth(),
        }
        print(json.dumps(reply), flush=True)
        if not peak_was_reset:
            peak_was_reset = reset_peak_rss()
    worker.close()


def run_alternating(
    script: str,
    names: list[str],
    arguments: list[str],
    *,
    warmup: int,
    repeats: int,
    steps_per_repeat: int,
    unavailable: dict[str, str] | None = None,
) -> dict:
    """Starts one worker per contender, warms each up, then alternates them `repeats` times
    (reversing the order every other round). Returns {name: {"times": [seconds per step],
    "rss_growth": bytes, "steady_rss_growth": bytes or None}} or {name: {"error": text}}.
    rss_growth is the resident high-water mark over the resident size before the first step,
    all steps included; steady_rss_growth the same for the steps after warm-up;
    growth_by_kind the resident growth after the last step by `resident_by_kind`, and
    tensor_peak_growth the worker's `tensor_peak_growth()`. "times" holds one mean per repeat;
    "step_times" every step's seconds, by repeat, and "warmup_times" the warm-up steps'."""
    results: dict = {name: {"error": why} for name, why in (unavailable or {}).items()}
    processes = {}
    for name in names:
        if name in results:
            continue
        try:
            processes[name] = start_worker(script, name, arguments)
            warmup_times = ask(processes[name], name, warmup)["times"]
            results[name] = {
                "times": [],
                "step_times": [],
                "warmup_times": warmup_times,
                "rss_growth": 0,
                "steady_rss_growth": None,
            }
        except RuntimeError as error:
            results[name] = {"error": str(error)}
    for repeat in range(repeats):
        order = list(processes) if repeat % 2 == 0 else list(reversed(processes))
        for name in order:
            reply = ask(processes[name], name, steps_per_repeat)
            results[name]["times"].append(sum(reply["times"]) / len(reply["times"]))
            results[name]["step_times"].append(reply["times"])
            results[name]["rss_growth"] = reply["rss_growth"]
            results[name]["steady_rss_growth"] = reply["steady_rss_growth"]
            results[name]["growth_by_kind"] = reply["growth_by_kind"]
            results[name]["tensor_peak_growth"] = reply["tensor_peak_growth"]
    for process in processes.values():
        process.stdin.write(json.dumps({"stop": True}) + "\n")
        process.stdin.close()
        process.wait(timeout=120)
    return {name: results[name] for name in names}


def read_reply(process, name: str) -> dict:
    for line in process.stdout:
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {name} exited with code {process.wait()} before answering")


def ask(process, name: str, steps: int) -> dict:
    process.stdin.write(json.dumps({"steps": steps}) + "\n")
    process.stdin.flush()
    return read_reply(process, name)


def package_versions(packages=("tensorflow", "keras", "numpy", "torch", "timm")) -> dict:
    """Python's version and the packages', without importing them ("not installed" if absent)."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def versions(packages=("tensorflow", "keras", "numpy", "torch", "timm")) -> dict:
    """Versions of the contenders' packages and the CPU, without importing them."""
    return {**package_versions(packages), "cpu": f"{cpu_model()}, {os.cpu_count()} cores"}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The packages whose versions every data file records.
VERSIONED = ("tensorflow", "keras", "numpy", "torch", "timm", "jax", "jaxlib")


# CPU features that decide which kernels TensorFlow, oneDNN and torch use.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def machine() -> dict:
    """The CPU of this machine: model name, logical CPUs, physical cores, the logical CPUs this
    process may run on, and which of CPU_FEATURES it has (Linux; fewer fields elsewhere)."""
    found = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": None}
    if hasattr(os, "sched_getaffinity"):
        found["usable_cpus"] = len(os.sched_getaffinity(0))
    if os.path.exists("/proc/cpuinfo"):
        cores, features, physical = set(), set(), None
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "physical id":
                    physical = value
                elif key == "core id":
                    cores.add((physical, value))
                elif key == "flags" and not features:
                    features = set(value.split())
        found["physical_cores"] = len(cores) or None
        found["features"] = [feature for feature in CPU_FEATURES if feature in features]
    found["system"] = f"{platform.system()} {platform.release()}"
    return found


def compiler_version() -> str | None:
    """The first line of `--version` of the C++ compiler bit_tf's native kernels build with
    (`$CXX`, else `c++` or `g++`), or None without one."""
    import shutil

    configured = os.environ.get("CXX")
    compiler = shutil.which(configured) if configured else None
    compiler = compiler or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    try:
        output = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return output.splitlines()[0].strip() if output.strip() else None


def git_commit() -> dict:
    """The commit of this checkout and whether tracked files differ from it (None outside git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*arguments):
        return subprocess.run(
            ["git", "-C", root, *arguments], capture_output=True, text=True, timeout=30
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "modified": None}
        changed = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "modified": bool(changed.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}


DEFAULT_RESULTS_DIR = os.path.join("benchmarks", "results")


def raw_timings(result: dict) -> dict:
    """A contender's raw timings from `run_alternating`, as the data file names them (seconds),
    or its error."""
    if "error" in result:
        return {"error": result["error"]}
    return {
        "warmup_step_seconds": result["warmup_times"],
        "step_seconds_by_repeat": result["step_times"],
        "seconds_per_step_by_repeat": result["times"],
    }


def results_folder() -> str | None:
    """Where this run's data file goes: --results_dir if given (None if ''), else
    benchmarks/results of this checkout, but nowhere for --quick runs."""
    if FLAGS.results_dir is not None:
        return FLAGS.results_dir or None
    if FLAGS.quick:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(folder: str, label: str, run: dict, started: float) -> str:
    """Writes `run` as <folder>/<UTC time of `started`>-<label>.json (another name, never an
    existing file's) and returns its path."""
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    path = os.path.join(folder, f"{stamp}-{label}.json")
    count = 1
    while os.path.exists(path):
        count += 1
        path = os.path.join(folder, f"{stamp}-{label}-{count}.json")
    with open(path + ".partial", "w") as handle:
        json.dump(run, handle, indent=1)
        handle.write("\n")
    os.replace(path + ".partial", path)
    return path


def define_model_flags(*, image_size: int, batch_size: int) -> None:
    """The flags that say what is measured: --model, --image_size, --batch_size, --num_classes."""
    flags.DEFINE_string("model", "BiT-S-R50x1", "BiT model name (bit_tf.list_models()).")
    flags.DEFINE_integer("image_size", image_size, "Square image size in pixels.")
    flags.DEFINE_integer("batch_size", batch_size, "Images per step.")
    flags.DEFINE_integer("num_classes", 1000, "Classes of the head.")


def define_flags(
    *, image_size: int, batch_size: int, steps_per_repeat: int, warmup: int, contenders: str
) -> None:
    """The flags every benchmark script shares, with that script's defaults."""
    define_model_flags(image_size=image_size, batch_size=batch_size)
    flags.DEFINE_integer("repeats", 5, "Timed repetitions per contender, after warm-up.")
    flags.DEFINE_integer("steps_per_repeat", steps_per_repeat, "Steps timed per repetition.")
    flags.DEFINE_integer("warmup", warmup, "Untimed steps per contender before timing.")
    flags.DEFINE_bool("quick", False, "One repetition of one step: checks that everything runs.")
    flags.DEFINE_list("contenders", contenders, "Which contenders to run.")
    flags.DEFINE_string("output", None, "Also write the Markdown report to this file.")
    flags.DEFINE_string(
        "results_dir",
        None,
        "Folder for the run's data file (<UTC time>-<script>-<dtype>.json, every raw timing). "
        f"Default: {DEFAULT_RESULTS_DIR}, or none with --quick; '' writes none.",
    )
    flags.DEFINE_string("worker", None, "Internal: run as the worker of this contender.")


def benchmark(
    script: str, workers: dict, passed_flags: tuple, unavailable: dict, report, *, label: str
) -> None:
    """The driver: checks the flags, runs the contenders alternately in workers of `script`
    (given `passed_flags`), prints the Markdown of `report(results)`, which returns (Markdown,
    figures), writes it to --output, and writes the run's data file (`write_results`, named
    with `label`, e.g. "cpu-float32") into `results_folder()`: the command, flags, time, commit,
    machine, versions, every raw timing and `figures`."""
    started = time.time()
    if FLAGS.quick:
        FLAGS.repeats, FLAGS.steps_per_repeat, FLAGS.warmup = 1, 1, 1
    try:
        parse_name(FLAGS.model)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    unknown = [name for name in FLAGS.contenders if name not in workers]
    if unknown:
        raise app.UsageError(f"Unknown contenders {unknown}; choose from {sorted(workers)}.")
    names = (
        "model",
        "image_size",
        "batch_size",
        "num_classes",
        "repeats",
        "steps_per_repeat",
        "warmup",
        *passed_flags,
    )
    results = run_alternating(
        script,
        FLAGS.contenders,
        [f"--{name}={getattr(FLAGS, name)}" for name in names],
        warmup=FLAGS.warmup,
        repeats=FLAGS.repeats,
        steps_per_repeat=FLAGS.steps_per_repeat,
        unavailable={name: why for name, why in unavailable.items() if name in FLAGS.contenders},
    )
    text, figures = report(results)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            handle.write(text + "\n")
    folder = results_folder()
    if folder:
        run = {
            "schema": "bit_tf-benchmark/1",
            "benchmark": label,
            "command": shlex.join(["python", *sys.argv]),
            "flags": {
                name: getattr(FLAGS, name)
                for name in (*names, "quick", "contenders", "output", "results_dir")
            },
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git": git_commit(),
            "machine": machine(),
            "versions": {**package_versions(VERSIONED), "compiler": compiler_version()},
            **{key: value for key, value in figures.items() if key != "contenders"},
            "contenders": {
                name: {**raw_timings(result), **figures.get("contenders", {}).get(name, {})}
                for name, result in results.items()
            },
        }
        print(f"data file: {write_results(folder, label, run, started)}")
