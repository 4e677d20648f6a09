"""Shared fixtures. Real data comes from ../shared/data (never copied into the repository)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# A Prefect home of the test session's own, and s2pipe's Prefect settings, before anything imports prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="s2pipe-prefect-"))
import pytest  # noqa: E402

import s2pipe.flows  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("S2PIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (real Sentinel-2 data); CI always has it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set S2PIPE_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def stac_items_dir(shared_data) -> Path:
    return shared_data / "stac-s2-items"


@pytest.fixture(scope="session")
def romania_10m(shared_data):
    """The real Romania L2A cube at 10 m: dict of numpy arrays (see shared/data/nrt-romania-s2l2a/README.md)."""
    import numpy as np

    with np.load(shared_data / "nrt-romania-s2l2a" / "romania_10m.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
