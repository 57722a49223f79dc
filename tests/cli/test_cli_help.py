"""`--help` of the console scripts lists each command's own flags and its usage text."""

import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# setup.cfg's console scripts, each with flags of its own that --help must list.
SCRIPTS = {
    "bit-finetune": ("model", "weights", "dataset", "export_dir"),
    "bit-export": ("model", "weights", "serving_dir", "image_size"),
    "bit-pretrain": ("model", "dataset", "checkpoint_dir"),
    "bit-vtab": ("model", "weights", "tasks"),
    "bit-predict": ("model", "format", "top_k", "image_size"),
    "bit-distill": ("teacher", "student", "temperature", "export_dir", "[no]overwrite"),
}


def console_script(name: str) -> str:
    """The installed console script `name`, next to this Python (pip install -e . puts it there)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed (pip install -e .)")
    return path


def test_console_scripts_help_lists_their_own_flags():
    environment = dict(os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="2")
    # All at once: each run is mostly TensorFlow's import.
    processes = {
        name: subprocess.Popen(
            [console_script(name), "--help"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    try:
        for name, process in processes.items():
            # absl ends --help with exit status 1; what matters is what it printed. Six
            # TensorFlow imports at once on a busy machine: a generous limit.
            output, errors = process.communicate(timeout=600)
            # The command's docstring is the usage text, as under python -m bit_cli.<name>.
            assert output.startswith(f"{name}: "), (output[:300], errors[-2000:])
            for flag in SCRIPTS[name]:
                assert f"--{flag}:" in output, (name, flag, output[-2000:])
            assert "--helpfull" in output
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
