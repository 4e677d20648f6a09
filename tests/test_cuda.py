"""CUDA paths of model inference, on a real GPU. Skipped cleanly where torch sees no CUDA device (CI, the
2-core machines); run on a GPU machine with ``.venv/bin/python -m pytest -q tests/test_cuda.py``.

- forecasts and land-cover probabilities computed on CUDA equal the CPU ones within float32 tolerance;
- ``precision="tf32"`` runs TensorFloat-32 matmuls, stays close to float32, and restores torch's setting;
- ``resolve_device(None)`` picks CUDA on its own;
- on a real Dask worker advertising ``GPU=1``, inference chunks run there and on its CUDA device.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import class_images, periodic_cube

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


@pytest.fixture(scope="module")
def models():
    from s2pipe.forecast import fit_dynamics
    from s2pipe.mapping import train_mapper

    img, lab = class_images()
    mapper = train_mapper(img, lab, seq_len=3, fcn_epochs=2, temporal_epochs=1, base=4, depth=2, seed=0, device="cpu")
    dyn = fit_dynamics(periodic_cube(n_t=40), scheme="rk4", hidden=8, epochs=2, seed=0, device="cpu")
    return mapper, dyn


def test_the_default_device_is_cuda():
    from s2pipe.forecast import resolve_device

    assert resolve_device(None).type == "cuda"


def test_forecast_on_cuda_equals_cpu(models):
    _, dyn = models
    hist = periodic_cube(n_t=40)
    cpu = dyn.forecast(hist, steps=12, device="cpu").values
    gpu = dyn.forecast(hist, steps=12, device="cuda").values
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_tf32_is_close_to_float32_and_restores_the_setting(models):
    _, dyn = models
    hist = periodic_cube(n_t=40)
    before = torch.backends.cuda.matmul.allow_tf32
    f32 = dyn.forecast(hist, steps=12, device="cuda").values
    tf32 = dyn.forecast(hist, steps=12, device="cuda", precision="tf32").values
    assert torch.backends.cuda.matmul.allow_tf32 == before
    np.testing.assert_allclose(tf32, f32, atol=5e-3)


def test_mapper_probabilities_on_cuda_equal_cpu(models):
    mapper, _ = models
    img, _ = class_images()
    cpu = mapper.predict(img, device="cpu").values
    gpu = mapper.predict(img, device="cuda").values
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_inference_runs_on_the_gpu_worker(models):
    """A real worker advertising GPU=1 gets every inference chunk, and computes it on its CUDA device."""
    distributed = pytest.importorskip("distributed")
    from s2pipe.forecast import DynamicsModel, forecast_cube
    from s2pipe.runtime.placement import inference_placement

    mapper, dyn = models
    seen: list[tuple[str, str]] = []
    forecast = DynamicsModel.forecast

    def recorded(self, *args, **kwargs):
        seen.append((distributed.get_worker().address, self.device.type))
        return forecast(self, *args, **kwargs)

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)

    async def start():
        return await distributed.Worker(cluster.scheduler_address, nthreads=1, resources={"GPU": 1}, dashboard=False)

    gpu_worker = cluster.sync(start)
    try:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(2, timeout=20)
            DynamicsModel.forecast = recorded
            try:
                with inference_placement(client):
                    fc = forecast_cube(dyn, periodic_cube(n_t=40).chunk({"y": 4, "x": 8}), steps=5)
                    got = client.compute(fc, sync=True)
            finally:
                DynamicsModel.forecast = forecast
    finally:
        cluster.sync(gpu_worker.close)
        cluster.close()
    want = forecast_cube(dyn, periodic_cube(n_t=40), steps=5).values
    np.testing.assert_allclose(got.values, want, rtol=1e-4, atol=1e-5)
    assert seen and {a for a, _ in seen} == {gpu_worker.address}
    assert {d for _, d in seen} == {"cuda"}
