"""Shared test fixtures: the authors' reference files in ../shared/fixtures."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One XLA compilation cache for the whole session: the fused kernels (bit_tf.kernels) cost
# seconds of XLA compilation in every fresh process, and many tests start the same kind of
# process (CLI runs, resumed runs, workers). Set here, before TensorFlow is imported, so that
# pytest-xdist's workers and every subprocess inherit it; a cache the caller set is kept.
if "--tf_xla_persistent_cache_directory" not in os.environ.get("TF_XLA_FLAGS", ""):
    _XLA_CACHE = tempfile.mkdtemp(prefix="bit-tf-tests-xla-cache-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["TF_XLA_FLAGS"] = " ".join(
        filter(
            None,
            [os.environ.get("TF_XLA_FLAGS"), f"--tf_xla_persistent_cache_directory={_XLA_CACHE}"],
        )
    )

# The same for bit_tf's C++ kernels (bit_tf.kernels.native): built once per test session, into a
# folder of its own rather than the user's cache.
if "BIT_TF_CACHE_DIR" not in os.environ:
    _NATIVE_CACHE = tempfile.mkdtemp(prefix="bit-tf-tests-native-cache-")
    atexit.register(shutil.rmtree, _NATIVE_CACHE, ignore_errors=True)
    os.environ["BIT_TF_CACHE_DIR"] = _NATIVE_CACHE

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# bit_tf before anything that loads TensorFlow (keras does), as users import it: it turns on
# TensorFlow's oneDNN kernels, which only works before TensorFlow is imported.
import bit_tf  # noqa: E402, F401

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get(
    "BIT_TF_FIXTURES", os.path.join(os.path.dirname(REPOSITORY), "shared", "fixtures")
)
OFFICIAL_CHECKPOINT = os.path.join(FIXTURES, "bit_r14x1_official.npz")
REFERENCE_OUTPUTS = os.path.join(FIXTURES, "bit_r14x1_reference_outputs.npz")
FIXTURE_UNITS = (1, 1, 1, 1)


@pytest.fixture(scope="session")
def official_checkpoint() -> str:
    """Path of the random-weight R14x1 checkpoint in the official layout."""
    if not os.path.exists(OFFICIAL_CHECKPOINT):
        pytest.fail(f"Missing fixture {OFFICIAL_CHECKPOINT}; set BIT_TF_FIXTURES to its folder.")
    return OFFICIAL_CHECKPOINT


@pytest.fixture(scope="session")
def reference_outputs() -> dict:
    """Images, logits and features that the authors' reference code gives for the fixture."""
    with np.load(REFERENCE_OUTPUTS) as data:
        return {key: data[key] for key in data.files}


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (a minute or more) start first, so that pytest-xdist's workers share
    them out and finish together instead of one worker ending on a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
