"""Whether TensorFlow turns its oneDNN kernels on by itself on this CPU, and turning them on.

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, while it is imported; unset, it falls back to a
default that depends on the CPU (TensorFlow 2.21, `DefaultOneDnnPolicy` in
tensorflow/core/util/port.cc, with the CPU tests of xla/tsl/platform/cpu_info.cc):

- Linux on x86: on where the CPU has AVX512_VNNI, AVX512_BF16, AVX_VNNI, AMX_TILE, AMX_INT8 or
  AMX_BF16 (Intel Xeons from Cascade Lake, Intel cores from Alder Lake, AMD from Zen 4), else
  off: AVX2 CPUs (AMD Zen 2 and 3) and AVX-512 ones without VNNI (Skylake-SP) are left off;
- Linux on ARM64: on for the Arm Neoverse V1 (MIDR implementer 0x41, part 0xd40), else off;
- other systems: decided by how TensorFlow was built; unknown here.

bit_tf turns oneDNN on (about 4x faster BiT training on the CPUs TensorFlow leaves off), which
works only before TensorFlow is imported; `too_late_to_enable` says where TensorFlow came first and
left oneDNN off on this CPU, where bit_tf warns.

Example:
    >>> from bit_tf.kernels import onednn
    >>> onednn.default_for({"avx2", "fma"}, machine="x86_64")  # an AMD Zen 3
    False
    >>> onednn.default_for({"avx2", "avx512f", "avx512_bf16"}, machine="x86_64")  # a Zen 4
    True
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Collection

#: The environment variable TensorFlow reads its oneDNN setting from ("1"/"true", "0"/"false").
ENVIRONMENT_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
#: x86 CPU features (as /proc/cpuinfo names them) any one of which turns TensorFlow's oneDNN on.
X86_FEATURES = frozenset(
    {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
)
#: The feature `cpu_features` adds for an Arm Neoverse V1, the ARM64 CPU TensorFlow turns it on for.
NEOVERSE_V1 = "neoverse_v1"
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})
ARM64_MACHINES = frozenset({"aarch64", "arm64"})
CPUINFO = "/proc/cpuinfo"
#: The warning where `too_late_to_enable()`.
TOO_LATE = (
    "TensorFlow was imported before bit_tf and left its oneDNN kernels off on this CPU, so "
    "bit_tf could not turn them on (about 4x faster BiT training). Import bit_tf first, or set "
    "TF_ENABLE_ONEDNN_OPTS=1 (or 0, to silence this) before importing TensorFlow."
)


def cpu_features(cpuinfo: str) -> frozenset[str]:
    """The features of the first processor in the text of /proc/cpuinfo, lower case.

    On x86 its `flags`; on ARM64 its `Features`, and `NEOVERSE_V1` where its `CPU implementer`
    and `CPU part` are an Arm Neoverse V1's (0x41 and 0xd40, what TensorFlow tests).

    Example:
        >>> sorted(cpu_features("processor : 0\\nflags : fpu avx2 avx512_vnni\\n"))
        ['avx2', 'avx512_vnni', 'fpu']
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if colon and name not in fields:  # the first processor's value
            fields[name] = value.strip().lower()
    features = set(fields.get("flags", "").split()) | set(fields.get("features", "").split())
    if (fields.get("cpu implementer"), fields.get("cpu part")) == ("0x41", "0xd40"):
        features.add(NEOVERSE_V1)
    return frozenset(features)


def default_for(features: Collection[str], machine: str) -> bool | None:
    """TensorFlow's oneDNN default on a Linux CPU with `features` (see `cpu_features`).

    Args:
        features: the CPU's features, as /proc/cpuinfo names them.
        machine: the CPU architecture, as `platform.machine()` names it.

    Returns:
        True where TensorFlow turns oneDNN on by itself, False where it leaves it off, None for
        an architecture whose rule is not known here.

    Example:
        >>> default_for({"avx2", "avx512f", "avx512_vnni"}, machine="x86_64")
        True
    """
    machine = machine.lower()
    if machine in X86_MACHINES:
        return not X86_FEATURES.isdisjoint(features)
    if machine in ARM64_MACHINES:
        return NEOVERSE_V1 in features
    return None


def tensorflow_default() -> bool | None:
    """TensorFlow's oneDNN default on this machine, where `TF_ENABLE_ONEDNN_OPTS` is unset.

    None where it is not known: a system other than Linux, or /proc/cpuinfo unreadable.

    Example:
        >>> tensorflow_default() in (True, False, None)
        True
    """
    if platform.system() != "Linux":
        return None
    try:
        with open(CPUINFO) as file:
            cpuinfo = file.read()
    except OSError:
        return None
    return default_for(cpu_features(cpuinfo), platform.machine())


def too_late_to_enable() -> bool:
    """Whether setting `TF_ENABLE_ONEDNN_OPTS=1` now comes too late to make a difference.

    True where TensorFlow was imported already, `TF_ENABLE_ONEDNN_OPTS` is unset (an explicit
    setting always wins), and TensorFlow's default left oneDNN off on this CPU, so that it would
    have been on had the variable been set first. False elsewhere, and where the default is not
    known (`tensorflow_default() is None`).

    Example:
        >>> if too_late_to_enable():  # in bit_tf/__init__.py, before Keras is imported
        ...     warnings.warn(TOO_LATE, stacklevel=2)
        >>> os.environ.setdefault(ENVIRONMENT_VARIABLE, "1")
    """
    return (
        ENVIRONMENT_VARIABLE not in os.environ
        and sys.modules.get("tensorflow") is not None
        and tensorflow_default() is False
    )
