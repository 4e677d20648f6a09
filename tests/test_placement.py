"""GPU placement of model inference (s2pipe.runtime.placement): on a real distributed cluster, inference tasks run only
on the worker advertising a ``GPU`` resource when there is one, and anywhere (no annotation) when there is none;
results equal the computation without a cluster."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from helpers import class_images, periodic_cube

from s2pipe.forecast import DynamicsModel, fit_dynamics, forecast_cube
from s2pipe.mapping import Mapper, train_mapper
from s2pipe.runtime.placement import (
    Placement,
    current_placement,
    gpu_workers,
    has_gpu_workers,
    inference_placement,
    inference_tasks,
    on_device,
)

distributed = pytest.importorskip("distributed")

_RAN: dict[str, list[str]] = {"mapper": [], "forecast": []}
"""Worker address of every inference call (the clusters run in this process: processes=False)."""
_LOCK = threading.Lock()


def _worker_address() -> str | None:
    try:
        return distributed.get_worker().address
    except ValueError:  # not on a worker (the no-cluster reference)
        return None


@pytest.fixture(autouse=True)
def record_inference(monkeypatch):
    """Record on which worker each mapper chunk / forecast block is computed."""
    predict_array, forecast = Mapper._predict_array, DynamicsModel.forecast

    def recorded(kind, fn):
        def wrapper(self, *args, **kwargs):
            addr = _worker_address()
            if addr is not None:
                with _LOCK:
                    _RAN[kind].append(addr)
            return fn(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Mapper, "_predict_array", recorded("mapper", predict_array))
    monkeypatch.setattr(DynamicsModel, "forecast", recorded("forecast", forecast))
    for v in _RAN.values():
        v.clear()
    yield _RAN


# ------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def models():
    img, lab = class_images()
    mapper = train_mapper(img, lab, seq_len=3, fcn_epochs=2, temporal_epochs=1, base=4, depth=2, seed=0)
    dyn = fit_dynamics(periodic_cube(), scheme="rk4", hidden=8, epochs=2, seed=0)
    return mapper, dyn


def _lazy(models):
    mapper, dyn = models
    img, _ = class_images()
    proba = mapper.predict(img.chunk({"y": 16, "x": 32}), threads=1)  # >= 4 chunks (realigned to the halo, if any)
    fc = forecast_cube(dyn, periodic_cube().chunk({"y": 4, "x": 8}), steps=5)  # 4 x 2 block tasks
    return proba, fc


@pytest.fixture(scope="module")
def expected(models):
    """The same predictions without a cluster (local threads)."""
    proba, fc = _lazy(models)
    return proba.compute(scheduler="threads").values, fc.compute(scheduler="threads").values


def _start_cluster(n_workers: int, gpu_worker: bool):
    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False,
                                       dashboard_address=None)
    extra = None
    if gpu_worker:
        async def start():
            return await distributed.Worker(cluster.scheduler_address, nthreads=1, resources={"GPU": 1},
                                            dashboard=False)

        extra = cluster.sync(start)
    client = distributed.Client(cluster)
    client.wait_for_workers(n_workers + bool(gpu_worker), timeout=20)
    return cluster, client, extra


def _stop(cluster, client, extra):
    client.close()
    if extra is not None:
        cluster.sync(extra.close)
    cluster.close()


@pytest.fixture(scope="module")
def gpu_cluster():
    """One plain worker and one worker advertising resources={"GPU": 1}."""
    cluster, client, extra = _start_cluster(1, gpu_worker=True)
    yield client, extra.address
    _stop(cluster, client, extra)


def _layer_annotations(arr) -> dict[str, dict | None]:
    return {name: layer.annotations for name, layer in arr.data.dask.layers.items()}


def _run(client, models):
    """Build and compute both predictions; the keys computed on each worker (task stream)."""
    proba, fc = _lazy(models)
    with distributed.get_task_stream(client) as ts:
        got = client.compute([proba, fc], sync=True)
    by_key = [(str(r["key"]), r["worker"]) for r in ts.data]
    return proba, fc, got, by_key


# ------------------------------------------------------------------------------------------ tests
def test_no_client_means_cpu_placement(models, caplog):
    from distributed.client import _get_global_client

    if _get_global_client() is not None:
        pytest.skip("a default Dask client exists in this process")
    assert gpu_workers() == [] and not has_gpu_workers()
    with caplog.at_level(logging.INFO, logger="s2pipe.runtime.placement"), inference_placement() as placement:
        assert placement == Placement(gpu=False)
    assert "no Dask cluster" in caplog.text


def test_gpu_workers_are_found_and_inference_runs_only_there(gpu_cluster, models, expected, record_inference,
                                                              caplog):
    client, gpu_address = gpu_cluster
    assert gpu_workers(client) == [gpu_address] and has_gpu_workers(client) and has_gpu_workers()
    with caplog.at_level(logging.INFO, logger="s2pipe.runtime.placement"):
        with inference_placement(client) as placement:
            assert placement.gpu and placement.gpu_workers == (gpu_address,) and placement.n_workers == 2
            assert current_placement() is placement
            import dask

            assert dask.config.get("optimization.fuse.active") is False  # fusion would drop the annotations
            proba, fc, (p, f), by_key = _run(client, models)
    assert current_placement() is None
    assert "GPU workers" in caplog.text and gpu_address in caplog.text
    # only the inference layers are annotated (not the halo exchange or the input)
    ann = _layer_annotations(proba)
    annotated = {k for k, v in ann.items() if v}
    assert annotated and all(k.startswith("mapper-predict") for k in annotated)
    assert all(v == {"resources": {"GPU": 1}} for k, v in ann.items() if v)
    assert any(v for k, v in _layer_annotations(fc).items() if k.startswith("forecast_block"))
    # every inference task ran on the GPU worker (task stream keys and the calls themselves)
    infer = [(k, w) for k, w in by_key if "mapper-predict" in k or k.startswith("('forecast_block")
             or "forecast_block-" in k]
    n_map, n_fc = int(np.prod(proba.data.numblocks)), int(np.prod(fc.data.numblocks))
    assert n_map >= 4 and n_fc == 8
    assert len([k for k, _ in infer if "mapper-predict" in k]) == n_map
    assert len([k for k, _ in infer if "forecast_block" in k]) >= n_fc
    assert {w for _, w in infer} == {gpu_address}
    assert len(record_inference["mapper"]) == n_map and set(record_inference["mapper"]) == {gpu_address}
    assert len(record_inference["forecast"]) == n_fc and set(record_inference["forecast"]) == {gpu_address}
    # the rest of the graph may run anywhere: the plain worker did some of it
    assert {w for k, w in by_key} - {gpu_address}
    np.testing.assert_allclose(p.values, expected[0], atol=1e-5)
    np.testing.assert_allclose(f.values, expected[1], rtol=1e-5, atol=1e-6)


def test_without_a_placement_block_nothing_is_annotated(gpu_cluster, models):
    proba, fc = _lazy(models)
    assert not any(_layer_annotations(proba).values()) and not any(_layer_annotations(fc).values())
    with inference_tasks() as p:
        assert p is None


def test_without_gpu_workers_nothing_changes(models, expected, record_inference, caplog):
    import dask

    fuse = dask.config.get("optimization.fuse.active", None)
    cluster, client, extra = _start_cluster(2, gpu_worker=False)
    try:
        assert gpu_workers(client) == [] and not has_gpu_workers(client)
        with caplog.at_level(logging.INFO, logger="s2pipe.runtime.placement"):
            with inference_placement(client) as placement:
                assert placement == Placement(gpu=False, n_workers=2)
                assert dask.config.get("optimization.fuse.active", None) == fuse  # config untouched
                proba, fc, (p, f), by_key = _run(client, models)
        assert "model inference on CPU: none of the 2 Dask workers" in caplog.text
        assert not any(_layer_annotations(proba).values()) and not any(_layer_annotations(fc).values())
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        n_map = int(np.prod(proba.data.numblocks))
        assert n_map >= 4 and len(record_inference["mapper"]) == n_map and len(record_inference["forecast"]) == 8
        assert set(record_inference["mapper"]) | set(record_inference["forecast"]) == workers  # both workers
        np.testing.assert_allclose(p.values, expected[0], atol=1e-5)
        np.testing.assert_allclose(f.values, expected[1], rtol=1e-5, atol=1e-6)
    finally:
        _stop(cluster, client, extra)


def test_per_worker_device_uses_a_cached_copy(models):
    """A task whose worker has another device than the model's uses a per-process copy ("meta" stands in for
    CUDA here); the shared model is never moved."""
    from s2pipe.forecast import _model_on
    from s2pipe.mapping import _mapper_on

    mapper, dyn = models
    assert on_device(mapper, mapper.device, _mapper_on) is mapper
    meta = on_device(mapper, "meta", _mapper_on)
    assert meta is not mapper and meta.device == torch.device("meta") and next(meta.fcn.parameters()).is_meta
    assert on_device(mapper, "meta", _mapper_on) is meta
    assert mapper.device == torch.device("cpu") and not next(mapper.fcn.parameters()).is_meta
    copy = on_device(dyn, "meta", _model_on)
    assert copy.device == torch.device("meta") and dyn.device == torch.device("cpu")
    assert copy.config == dyn.config


def test_task_threads_share_the_host_cores_between_all_its_workers(gpu_cluster, monkeypatch):
    """The one CPU-thread policy of inference tasks: the host's cores divided by the Dask threads of every
    worker on the host (here 2 workers x 1 thread on one host), at least 1; an explicit value wins; outside a
    distributed worker the library's own setting (None)."""
    import s2pipe.runtime.placement as placement

    client, _ = gpu_cluster

    def in_tasks(*args) -> set:  # one task on each (in-process) worker
        workers = list(client.scheduler_info()["workers"])
        return set(client.gather([client.submit(placement.task_threads, *args, workers=[w], pure=False)
                                  for w in workers]))

    placement._host_threads.cache_clear()
    monkeypatch.setattr(placement, "available_cores", lambda: 8)
    assert in_tasks() == {4}  # 8 cores / (1 + 1) worker threads on the host
    assert in_tasks(3) == {3}
    monkeypatch.setattr(placement, "available_cores", lambda: 1)
    assert in_tasks() == {1}
    assert placement.task_threads() is None and placement.task_threads(2) == 2

    before = torch.get_num_threads()
    with placement.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
