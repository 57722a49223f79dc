"""Command-line programs (absl) of bit-tf: the layer that composes bit_tf and hub_export.

Ctrl-C while a command starts (TensorFlow loads for seconds) ends it with one line and status
130 (`sys.excepthook`), as inside its main (`bit_cli.common.run`).

Their first lines are their own. Importing this package, which every command does first, sets
TensorFlow's C++ log level (`TF_CPP_MIN_LOG_LEVEL`) to `LOG_LEVEL` unless the user set it, and
holds the lines TensorFlow logs while it loads to the same level: TensorFlow 2.21 writes those
(oneDNN and CUDA notices, "All log messages before absl::InitializeLog() is called ...") before
its level takes effect. `TF_CPP_MIN_LOG_LEVEL=0` shows everything again.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

#: TensorFlow's C++ log level for the commands, unless the user sets TF_CPP_MIN_LOG_LEVEL: 3,
#: fatal errors only. Level 2 still shows an ERROR on every machine where a CUDA build of
#: TensorFlow finds no GPU ("failed call to cuInit", at the first operation); a TensorFlow error
#: that stops a command reaches the user as a Python exception all the same.
LOG_LEVEL = 3

# A line of TensorFlow's C++ log (absl's format): severity I, W, E or F, date, time, thread,
# file:line]. "I0000 00:00:1796596192.695268    4437 port.cc:153] oneDNN custom operations ..."
_NATIVE_LOG_LINE = re.compile(rb"([IWEF])\d{4} [\d:.]+ +\d+ [^\]\s]+:\d+\] ")
_SEVERITIES = b"IWEF"  # levels 0 to 3, as TF_CPP_MIN_LOG_LEVEL counts them
_BEFORE_INITIALIZE_LOG = b"WARNING: All log messages before absl::InitializeLog() is called"


def log_level() -> int:
    """TensorFlow's C++ log level as TensorFlow reads TF_CPP_MIN_LOG_LEVEL (unset or no number:
    0), after this package set its default.

    Example:
        >>> log_level()  # TF_CPP_MIN_LOG_LEVEL unset before bit_cli was imported
        3
    """
    number = re.match(r"\s*([-+]?\d+)", os.environ.get("TF_CPP_MIN_LOG_LEVEL", ""))
    return int(number.group(1)) if number else 0


def _hidden(line: bytes, level: int) -> bool:
    """Whether TensorFlow's `level` would have kept `line` off stderr, had it applied yet."""
    if line.startswith(_BEFORE_INITIALIZE_LOG):
        return level >= 1  # a warning, about lines that `level` hides
    match = _NATIVE_LOG_LINE.match(line)
    return match is not None and _SEVERITIES.index(match.group(1)) < level


def _forward(lines: int, stderr: int, level: int) -> None:
    """Copies the lines arriving on the pipe `lines` to `stderr`, as they come, but the hidden."""
    with open(lines, "rb") as source, open(stderr, "wb", buffering=0) as target:
        for line in source:
            if not _hidden(line, level):
                with contextlib.suppress(OSError):  # keep draining: a full pipe blocks writers
                    target.write(line)


@contextlib.contextmanager
def native_log_level_while_loading(level: int) -> Iterator[None]:
    """Applies TensorFlow's C++ log `level` to what is written on stderr (file descriptor 2)
    inside the block: lines of TensorFlow's log below `level` are dropped, all else is passed
    on as it comes (Python warnings and tracebacks, other programs' lines, fatal errors).

    Example:
        >>> with native_log_level_while_loading(log_level()):
        ...     import tensorflow
    """
    if level <= 0:
        yield
        return
    try:
        stderr = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    read_end, write_end = os.pipe()
    forwarder = threading.Thread(
        target=_forward, args=(read_end, os.dup(stderr), level), daemon=True
    )
    forwarder.start()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes the pipe's last write end: the forwarder reads to its end
        os.close(stderr)
        # A child process started inside the block may hold the pipe open: don't wait for it.
        forwarder.join(timeout=10)


def program_name() -> str:
    """The running command's name, from `sys.argv[0]`: "bit-finetune" for the console script
    and for `python -m bit_cli.finetune`; "bit-tf" where it cannot be told.

    Example:
        >>> program_name()  # under bit-export
        'bit-export'
    """
    path = sys.argv[0] if sys.argv else ""
    name = os.path.basename(path)
    if name.endswith(".py") and os.path.basename(os.path.dirname(path)) == "bit_cli":
        return "bit-" + name[: -len(".py")]
    return name if name.startswith("bit-") else "bit-tf"


def _stop_on_interrupt(kind, value, trace) -> None:
    """`sys.excepthook`: Ctrl-C before a command's main runs (while TensorFlow loads) ends it
    with one line and status 130, as `bit_cli.common.leave` does inside it; other errors go to
    the hook before."""
    if not issubclass(kind, KeyboardInterrupt):
        _previous_excepthook(kind, value, trace)
        return
    if os.environ.get("BIT_TF_TRACEBACK", "") not in ("", "0"):
        _previous_excepthook(kind, value, trace)
    print(f"{program_name()}: stopped by SIGINT (Ctrl-C).", file=sys.stderr, flush=True)
    os._exit(130)


_previous_excepthook = sys.excepthook
# Only for the commands (`python -m bit_cli.<name>` imports this package while sys.argv[0] is
# still "-m"): in a Python session or a user's script Ctrl-C stays Python's.
if sys.argv and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]).startswith("bit-")):
    sys.excepthook = _stop_on_interrupt

if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(LOG_LEVEL)

with native_log_level_while_loading(log_level()):
    # bit_tf sets TensorFlow's CPU options (oneDNN kernels), which only count if it is imported
    # before TensorFlow; then TensorFlow, which every command uses, loads inside the block.
    import bit_tf  # noqa: F401, I001 (bit_tf first: it sets oneDNN before TensorFlow loads)
    import tensorflow  # noqa: F401
