"""Shared fixtures.

CUDA tests (marker ``cuda``) run in their own pytest process: under the numba-cuda simulator
(``NUMBA_ENABLE_CUDASIM=1``, read when numba.cuda is imported) or on a real GPU. Without either
they are skipped.
"""

import numpy as np
import pytest

import nnkern._jit as jit
from nnkern.backend import cuda_available


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Run a test once with every kernel serial and once with every kernel parallel."""
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 0 if request.param == "parallel" else 1 << 62)
    return request.param


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device and NUMBA_ENABLE_CUDASIM is not set")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
