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


# ------------------------------------------------------------------------------------------ flow runs
@pytest.fixture(scope="module")
def prefect_harness():
    """A Prefect API of the test module's own (a temporary server and database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The flow tests' tiny demo region (``helpers.FLOW_DEMO``) and a catalog profile YAML that serves it."""
    from helpers import FLOW_DEMO

    from s2pipe.synthetic.demo import generate_demo

    root = tmp_path_factory.mktemp("demo") / "region"
    region = generate_demo(root, FLOW_DEMO)
    profile = root.parent / "tiny-demo.yaml"
    base = (REPO / "catalogs" / "local-demo.yaml").read_text()
    profile.write_text(base.replace("demo_root: out/demo", f"demo_root: {root}"))
    return region, profile
