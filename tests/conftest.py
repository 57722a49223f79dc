"""Shared test fixtures: the authors' reference files in ../shared/fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
