"""C++ kernels for GroupNorm(+ReLU) and weight standardization, for TensorFlow on CPUs.

XLA makes one full pass over a tensor per reduction. The kernels in `normalization_ops.cc` make
all their passes over one example (GroupNorm) or one block of output channels (weight
standardization) while it is in the core's cache, with the same formulas as
`bit_tf.kernels.closed_form`.

They are built on first use with the system's C++ compiler (`$CXX`, else `c++`) against the
installed TensorFlow's headers (a few seconds) and cached under `$BIT_TF_CACHE_DIR` (default
`~/.cache/bit_tf`), keyed by the source, TensorFlow's version and flags, the compiler and the
CPU. Where no compiler is found or the build fails, `library()` returns None and the
XLA-compiled kernels run instead; a warning says why, once. Whether they run at all is
`bit_tf.kernels.settings().native` (`BIT_TF_NATIVE_KERNELS=0` turns them off), and where is
decided by `bit_tf.kernels.tensorflow.native_operations`.

Example:
    >>> from bit_tf.kernels import native
    >>> operations = native.library()  # None where they cannot be built
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import threading

from bit_tf.training.atomic import atomic_path

log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("normalization_ops.cc")
LIBRARY_NAME = "bit_tf_normalization_ops.so"

# Tried in order. The first set tunes for this CPU; GCC cannot compile Eigen's AVX512-FP16
# code that TensorFlow's headers include, hence -mno-avx512fp16 (x86 only). The second is
# plain, for other architectures and compilers.
COMPILE_OPTION_SETS = (
    ("-O3", "-march=native", "-mno-avx512fp16", "-ffp-contract=off"),
    ("-O3", "-ffp-contract=off"),
)

_LOCK = threading.Lock()


class NativeBuildError(RuntimeError):
    """The native kernels could not be compiled; the message holds the compiler's output."""


def cache_directory() -> pathlib.Path:
    """Where built libraries are kept: `$BIT_TF_CACHE_DIR`, else `~/.cache/bit_tf`.

    Example:
        >>> cache_directory().name in ("bit_tf", os.environ.get("BIT_TF_CACHE_DIR", "bit_tf"))
        True
    """
    configured = os.environ.get("BIT_TF_CACHE_DIR")
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path("~/.cache/bit_tf").expanduser()


def compiler() -> str | None:
    """The C++ compiler to build with: `$CXX`, else `c++` or `g++` on the PATH (None if none).

    Example:
        >>> compiler() is None or isinstance(compiler(), str)
        True
    """
    configured = os.environ.get("CXX")
    if configured:
        return configured
    return shutil.which("c++") or shutil.which("g++")


def _tensorflow_flags() -> tuple[list[str], list[str]]:
    import tensorflow as tf

    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _cpu_description() -> str:
    """The CPU's model and feature flags (x86 Linux), or the platform's name elsewhere."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def build_key(compiler_command: str) -> str:
    """A digest of everything the built library depends on.

    Example:
        >>> len(build_key("c++"))
        16
    """
    import tensorflow as tf

    compile_flags, link_flags = _tensorflow_flags()
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        tf.__version__.encode(),
        " ".join(compile_flags + link_flags).encode(),
        repr(COMPILE_OPTION_SETS).encode(),
        compiler_command.encode(),
        _cpu_description().encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build(directory: str | os.PathLike, compiler_command: str | None = None) -> pathlib.Path:
    """Compiles `normalization_ops.cc` into `directory`, returns the library's path.

    The library is written under a temporary name and renamed into place, so a concurrent
    process (a distributed worker) never loads a half-written file.

    Raises:
        NativeBuildError: no compiler, or every set of options failed (with its output).

    Example:
        >>> path = build("/tmp/bit_tf_native")  # doctest: +SKIP
        >>> path.name
        'bit_tf_normalization_ops.so'
    """
    compiler_command = compiler_command or compiler()
    if not compiler_command:
        raise NativeBuildError("no C++ compiler found: set CXX, or install g++ or clang")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / LIBRARY_NAME
    compile_flags, link_flags = _tensorflow_flags()
    failures = []
    for options in COMPILE_OPTION_SETS:
        command = [*compiler_command.split(), *options, "-w", "-shared", "-fPIC", str(SOURCE)]
        try:
            with atomic_path(str(target), overwrite=True, suffix=".so") as partial:
                _compile([*command, "-o", partial, *compile_flags, *link_flags], options)
        except _CompileError as failure:
            failures.append(str(failure))
            continue
        return target
    raise NativeBuildError(
        f"compiling {SOURCE.name} with {compiler_command!r} failed:\n" + "\n".join(failures)
    )


class _CompileError(Exception):
    """One set of compiler options failed; the message says how."""


def _compile(command: list[str], options: tuple[str, ...]) -> None:
    """Runs the compiler `command`; raises `_CompileError` naming `options` where it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise _CompileError(f"{' '.join(options)}: {error}") from error
    if result.returncode != 0:
        output = result.stderr[-800:]
        raise _CompileError(f"{' '.join(options)}: exit {result.returncode}: {output}")


def library():
    """The loaded op library (`bit_group_norm`, `bit_group_norm_grad`, `bit_standardize_kernel`,
    `bit_standardize_kernel_grad`), built if needed; None where it cannot be built.

    Example:
        >>> operations = library()
        >>> operations is None or hasattr(operations, "bit_group_norm")
        True
    """
    with _LOCK:
        return _load()


@functools.cache
def _load():
    import tensorflow as tf

    compiler_command = compiler()
    if not compiler_command:
        log.warning("bit_tf: no C++ compiler found, so the native kernels are off (XLA's instead)")
        return None
    directory = cache_directory() / "native" / build_key(compiler_command)
    path = directory / LIBRARY_NAME
    try:
        if not path.exists():
            log.info("bit_tf: building the native kernels in %s", directory)
            build(directory, compiler_command)
        return tf.load_op_library(str(path))
    except (NativeBuildError, OSError, tf.errors.NotFoundError) as error:
        log.warning("bit_tf: the native kernels are off (XLA's instead): %s", error)
        return None
