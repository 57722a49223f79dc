"""The model core on the JAX backend: the layer, model and folding tests rerun in a JAX process."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND_INDEPENDENT = (
    "published_backbone_sizes",
    "finetune_stays_callable",
    "submodules_load_on_first_use",
    "unknown_names_are_refused_clearly",
    "builder_rejects_bad_arguments",
    "unknown_dtype_policy_is_named",
)


def test_layers_and_parity_pass_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        "tests/models/test_layers.py",
        "tests/models/test_models.py",
        "tests/models/test_inference.py",
        "tests/kernels/test_kernels_jax.py",
        "-k",
        # Left out: tests whose subject does not depend on the backend (names, argument checks,
        # lazy imports, which start their own JAX process) and the big models' sizes.
        " and ".join(f"not {name}" for name in BACKEND_INDEPENDENT),
    ]
    result = subprocess.run(
        command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
