"""Fault tolerance with real processes on 127.0.0.1: a Dask worker killed in the middle of a write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import arrays, make_dataset

from s2pipe.stac.server import free_port
from s2pipe.store.zarr import STATE_DIR, write_cube

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _slow(block):
    time.sleep(0.25)  # each 8 x 8 block takes a while, so the kill lands mid-run
    return block


@pytest.fixture
def cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes (no nanny: a killed worker stays dead)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False", "PYTHONPATH": str(Path(__file__).parent)}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    time.sleep(2)
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                 "--no-dashboard", "--memory-limit", "1GiB", "--local-directory", str(tmp_path / f"w{i}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for i in range(2)]
    procs += workers
    try:
        yield address, workers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def test_killed_worker_mid_write_run_completes_and_equals_undisturbed(cluster, tmp_path):
    from distributed import Client

    address, workers = cluster
    reference = tmp_path / "reference.zarr"
    write_cube(make_dataset(), reference, region_size=16)  # undisturbed, local scheduler

    ds = make_dataset()
    ds["reflectance"] = ds["reflectance"].copy(data=ds["reflectance"].data.map_blocks(_slow, dtype="float32"))
    path = tmp_path / "cube.zarr"
    killed = []

    def progress(done: int, total: int) -> None:
        if done >= 2 and not killed:  # a few regions written, the rest in flight or queued
            workers[0].send_signal(signal.SIGKILL)
            killed.append(done)

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
        write_cube(ds, path, region_size=16, progress=progress)
        assert killed and workers[0].wait(timeout=30) == -signal.SIGKILL
        assert len(client.scheduler_info()["workers"]) == 1
    assert (path / STATE_DIR / "complete").exists()
    assert len(list((path / STATE_DIR / "done").iterdir())) == 12
    got, want = arrays(path), arrays(reference)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
