"""Shared pytest fixtures."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The real IDRiD / DIARETDB1 / EyePACS samples live beside the repository, never inside it.
REALDATA = os.environ.get("DR_SALIENCY_REALDATA",
                          os.path.join(os.path.dirname(REPO), "shared", "realdata"))


@pytest.fixture(scope="session")
def realdata():
    """Path of ../shared/realdata; skips the test when it is not there."""
    if not os.path.isdir(REALDATA):
        pytest.skip(f"real data samples not found at {REALDATA} (set DR_SALIENCY_REALDATA)")
    return REALDATA
