"""Object-store outputs and inputs through fsspec: a real S3 API on loopback (moto server), s3fs and GDAL /vsis3.

gs:// and az:// have no local server here: their URLs are checked to resolve to gcsfs / adlfs, and their
settings to hold no secret.
"""
from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import flow_config as _config
from helpers import make_dataset

from s2pipe.errors import InputError, OutputConflictError, StoreLockedError
from s2pipe.store.zarr import (
    STATE_DIR,
    append_cube,
    open_cube,
    store_lock,
    store_state,
    write_cube,
)

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

SECRET = "s2pipeSECRET" + secrets.token_hex(12)
"""The fake secret access key: a distinctive string searched for in logs, summaries and stored objects."""
KEY_ID = "AKIAS2PIPETEST000001"
BUCKET = "s2pipe-test"


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port) for the module: its ``http://host:port`` endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3(moto_endpoint, monkeypatch):
    """Fake credentials in the environment, an empty bucket, and the storage settings reaching the server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=moto_endpoint)
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return {"fs": fs, "storage": {"endpoint_url": moto_endpoint, "region": "us-east-1"}, "endpoint": moto_endpoint}


def _objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (bucket/key) -> its bytes."""
    fs.invalidate_cache()
    return {k: fs.cat_file(k) for k in fs.find(prefix)}


def _no_secret(blobs) -> None:
    for name, data in blobs.items():
        assert SECRET.encode() not in data, f"the secret key is stored in {name}"
        assert KEY_ID.encode() not in data, f"the access key id is stored in {name}"


# ----------------------------------------------------------------------------------------- outputs


def test_write_to_s3_equals_local_write(s3, tmp_path):
    ds = make_dataset()
    url = f"s3://{BUCKET}/cubes/c.zarr"
    local = write_cube(ds, tmp_path / "c.zarr", region_size=32)
    remote = write_cube(ds, url, region_size=32, storage=s3["storage"])
    assert remote == url
    with open_cube(local) as a, open_cube(url, storage=s3["storage"]) as b:
        xr.testing.assert_identical(a, b)
        assert b.attrs["s2pipe_signature"] == a.attrs["s2pipe_signature"]
    objs = _objects(s3["fs"], f"{BUCKET}/cubes")
    names = {k.removeprefix(f"{BUCKET}/cubes/") for k in objs}
    assert {"c.zarr/.zmetadata", f"c.zarr/{STATE_DIR}/state.json", f"c.zarr/{STATE_DIR}/complete"} <= names
    assert {f"c.zarr/{STATE_DIR}/done/{iy}_{ix}" for iy in range(2) for ix in range(2)} <= names
    assert not any(n.startswith(".c.zarr.lock") for n in names), "the lock was left behind"
    assert store_state(url, storage=s3["storage"]) == store_state(local) | {"created": store_state(url, storage=s3["storage"])["created"]}
    _no_secret(objs)
    # a second run on the same grid and inputs finds everything done
    calls = []
    write_cube(ds, url, region_size=32, storage=s3["storage"], progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 4)]


def test_resume_on_s3_writes_only_the_rest(s3):
    ds = make_dataset()
    url = f"s3://{BUCKET}/r.zarr"

    class Stop(Exception):
        pass

    def stop_after_one(done, total):
        if done >= 1:
            raise Stop

    with pytest.raises(Stop):
        write_cube(ds, url, region_size=32, storage=s3["storage"], progress=stop_after_one)
    with pytest.raises(InputError, match="incomplete"):
        open_cube(url, storage=s3["storage"])
    seen = []
    write_cube(ds, url, region_size=32, storage=s3["storage"], progress=lambda d, t: seen.append(d))
    assert seen == [1, 2, 3, 4], seen  # the resume writes the 3 regions not recorded
    with open_cube(url, storage=s3["storage"]) as got:
        np.testing.assert_array_equal(got.reflectance.values, ds.reflectance.values)


def test_append_and_conflict_on_s3(s3):
    full = make_dataset()
    url = f"s3://{BUCKET}/a.zarr"
    write_cube(full.isel(time=slice(0, 2)), url, region_size=32, storage=s3["storage"])
    append_cube(full.isel(time=slice(2, None)), url, storage=s3["storage"])
    with open_cube(url, storage=s3["storage"]) as got:
        np.testing.assert_array_equal(got.reflectance.values, full.reflectance.values)
        assert got.sizes["time"] == full.sizes["time"]
    state = store_state(url, storage=s3["storage"])
    assert "append" not in state and len(state["appends"]) == 1
    assert not s3["fs"].find(f"{BUCKET}/a.zarr/{STATE_DIR}/append-"), "append records left behind"

    before = _objects(s3["fs"], f"{BUCKET}/a.zarr")
    other = make_dataset(nx=48)
    with pytest.raises(OutputConflictError, match="grid"):
        write_cube(other, url, region_size=32, storage=s3["storage"])
    assert _objects(s3["fs"], f"{BUCKET}/a.zarr") == before, "a refused write changed the store"
    write_cube(other, url, region_size=32, storage=s3["storage"], overwrite=True)
    with open_cube(url, storage=s3["storage"]) as got:
        assert got.sizes["x"] == 48


def test_lock_on_s3_refuses_a_second_writer(s3):
    url = f"s3://{BUCKET}/l.zarr"
    lock = f"{BUCKET}/.l.zarr.lock"
    with store_lock(url, storage=s3["storage"]):
        s3["fs"].invalidate_cache()
        owner = json.loads(s3["fs"].cat_file(lock))
        assert set(owner) == {"host", "pid", "token", "started"}
        with pytest.raises(StoreLockedError, match="being written by another run"):
            write_cube(make_dataset(), url, region_size=32, storage=s3["storage"])
        # a writer on another host: the conditional create (If-None-Match) refuses it as well
        s3["fs"].invalidate_cache()
        with pytest.raises(FileExistsError):
            s3["fs"].pipe_file(lock, b"{}", mode="create")
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(lock)
    assert not s3["fs"].exists(f"{BUCKET}/l.zarr"), "the refused write touched the store"


def test_lock_race_on_s3_one_winner(s3):
    """Several writers starting at once (threads of other 'hosts'): exactly one gets the lock."""
    from s2pipe.store import zarr as store

    url = f"s3://{BUCKET}/race.zarr"
    results, barrier = [], threading.Barrier(4)

    def contender(i):
        lk = store.store_lock(url, storage=s3["storage"])
        barrier.wait()
        try:
            lk.__enter__()
            results.append("won")
        except StoreLockedError:
            results.append("refused")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1, results


# ------------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("url", [
    f"s3://{KEY_ID}:{SECRET}@{BUCKET}/c.zarr",
    f"az://container/c.zarr?sv=2022-11-02&sig={SECRET}",
    f"gs://bucket/c.zarr?X-Goog-Signature={SECRET}",
    f"abfs://{KEY_ID}:{SECRET}@account.dfs.core.windows.net/c.zarr",
])
def test_urls_with_credentials_are_refused_without_echo(url, tmp_path):
    from s2pipe.config import load_config

    with pytest.raises(InputError) as err:
        write_cube(make_dataset(), url)
    assert SECRET not in str(err.value) and "environment" in str(err.value)
    with pytest.raises(InputError) as err:
        load_config({"bbox": [0, 0, 1, 1], "start": "2021-01-01", "end": "2021-02-01", "output": url})
    assert SECRET not in str(err.value) and "environment" in str(err.value), str(err.value)
    from pydantic import ValidationError

    from s2pipe.config import RunConfig

    with pytest.raises(ValidationError) as verr:
        RunConfig(bbox=(0, 0, 1, 1), start="2021-01-01", end="2021-02-01", output=url)
    assert SECRET not in str(verr.value)


def test_output_urls_and_settings(tmp_path):
    from s2pipe.config import RunConfig, StorageConfig
    from s2pipe.runtime.objectstore import gdal_options, location, storage_options

    base = dict(bbox=(0, 0, 1, 1), start="2021-01-01", end="2021-02-01")
    cfg = RunConfig(**base, output="s3://bucket/cubes/c.zarr/",
                    storage=StorageConfig(profile="prod", endpoint_url="http://127.0.0.1:9000", region="eu-west-1"))
    assert cfg.output == "s3://bucket/cubes/c.zarr"
    assert "storage" not in cfg.parameters() and cfg.parameters()["output"] == "s3://bucket/cubes/c.zarr"
    assert RunConfig(**base, output=str(tmp_path / "x.zarr")).output == tmp_path / "x.zarr"  # local stays a Path
    assert storage_options(cfg.output, cfg.storage) == {
        "profile": "prod", "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"}}
    assert gdal_options(cfg.storage) == {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO",
                                        "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_PROFILE": "prod", "AWS_REGION": "eu-west-1"}
    with pytest.raises(InputError, match="names no object"):
        location("s3://bucket")
    with pytest.raises(InputError, match="not supported"):
        location("ftp://host/c.zarr")
    with pytest.raises(Exception, match="extra"):
        StorageConfig(secret_access_key="x")


def test_gs_and_az_urls_resolve_to_their_filesystems(monkeypatch, caplog, capfd):
    """No GCS/Azure server here: the URLs resolve to gcsfs / adlfs with the settings, secrets stay unlogged."""
    gcsfs = pytest.importorskip("gcsfs")
    adlfs = pytest.importorskip("adlfs")
    from s2pipe.runtime.objectstore import location

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "s2pipetest")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "c2VjcmV0" + SECRET)
    caplog.set_level(logging.INFO)  # root: DEBUG would route botocore's flood through every handler
    caplog.set_level(logging.DEBUG, logger="s2pipe")
    gs = location("gs://bucket/cubes/c.zarr", {"anon": True})
    assert isinstance(gs.fs, gcsfs.GCSFileSystem) and gs.key == "bucket/cubes/c.zarr" and gs.atomic_create
    az = location("az://container/cubes/c.zarr")
    assert isinstance(az.fs, adlfs.AzureBlobFileSystem) and az.key == "container/cubes/c.zarr" and az.atomic_create
    abfs = location("abfs://container@s2pipetest.dfs.core.windows.net/c.zarr")  # container@account: no secret
    assert isinstance(abfs.fs, adlfs.AzureBlobFileSystem)
    assert (abfs.parent / ".c.zarr.lock").url == "abfs://container@s2pipetest.dfs.core.windows.net/.c.zarr.lock"
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text


# ----------------------------------------------------------------------------------------- inputs


def test_build_cube_reads_s3_hrefs_through_gdal(s3, tmp_path):
    """COGs uploaded to the bucket, items with s3:// hrefs: GDAL /vsis3 against the moto endpoint reads what
    the local files give."""
    import rasterio

    from s2pipe.cube import build_cube
    from s2pipe.runtime.objectstore import gdal_options
    from s2pipe.synthetic.scenes import make_scenes

    items = [it.to_dict() for it in make_scenes(tmp_path, n_dates=2, size=32, block_size=128, bands=("B04", "B08"))]
    for it in items:
        for a in it["assets"].values():
            s3["fs"].put_file(a["href"], f"{BUCKET}/cogs/{Path(a['href']).relative_to(tmp_path)}")
    remote = json.loads(json.dumps(items))
    for it in remote:
        for a in it["assets"].values():
            a["href"] = f"s3://{BUCKET}/cogs/{Path(a['href']).relative_to(tmp_path)}"
    kw = dict(bands=["B04", "B08"], include_scl=True, resolution=10.0, chunk_size=32)
    local = build_cube(items, **kw).compute()
    # without the settings GDAL goes to AWS (first: GDAL caches what it has read, by href)
    with pytest.raises(Exception, match="amazonaws|credentials|resolve|403|Access"):
        build_cube(remote, **kw).compute()
    got = build_cube(remote, **kw, storage=s3["storage"]).compute()
    np.testing.assert_array_equal(got.values, local.values)
    assert int(local.max()) > 0
    with rasterio.Env(**gdal_options(s3["storage"])), rasterio.open(remote[0]["assets"]["B04"]["href"]) as src:
        assert src.driver == "GTiff"


# ------------------------------------------------------------------------------------------- the flow


@pytest.mark.slow
def test_flow_writes_to_s3_without_leaking_the_secret(s3, prefect_harness, tiny_demo, caplog, capfd):  # noqa: F811
    """regional-cube end to end into s3://: the cube, its run summary and quick-look beside it; the secret key
    is in no log line, no summary and no object of the bucket."""
    from s2pipe.flows.regional_cube import regional_cube

    caplog.set_level(logging.INFO)  # root: DEBUG would route botocore's flood through every handler
    caplog.set_level(logging.DEBUG, logger="s2pipe")
    region, profile = tiny_demo
    url = f"s3://{BUCKET}/flow/cube.zarr"
    cfg = _config(region, profile, url, storage=s3["storage"])
    summary = regional_cube(cfg)
    assert summary["output"] == url and summary["mode"] == "create"
    assert summary["run_summary"] == f"s3://{BUCKET}/flow/cube.run.json"
    assert summary["quicklook"] == f"s3://{BUCKET}/flow/cube.png"
    with open_cube(url, storage=s3["storage"]) as ds:
        assert ds.reflectance.dims == ("time", "band", "y", "x") and ds.sizes["time"] > 3
        assert float(ds.observed.mean()) > 0
        assert "storage" not in ds.attrs["parameters"] and ds.attrs["parameters"]["output"] == url
    objs = _objects(s3["fs"], BUCKET)
    record = json.loads(objs[f"{BUCKET}/flow/cube.run.json"])
    assert record["status"] == "completed" and record["output"] == url and "storage" not in record["parameters"]
    assert objs[f"{BUCKET}/flow/cube.png"].startswith(b"\x89PNG")
    assert f"{BUCKET}/flow/cube.zarr/{STATE_DIR}/complete" in objs
    _no_secret(objs)
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
