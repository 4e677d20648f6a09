"""Land-cover mapping (s2pipe.mapping, s2pipe.ml.nets.unet): modules, loss, training, chunked prediction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch.nn import functional as F

from s2pipe.errors import InputError
from s2pipe.mapping import (
    Mapper,
    MapperConfig,
    _augment,
    _class_weights,
    _halo_chunks,
    default_epochs,
    default_patch,
    load_mapper,
    train_mapper,
)
from s2pipe.ml.nets.unet import (
    ConvLSTM,
    SequenceHead,
    TemporalHead,
    UNet,
    joint_loss,
    receptive_radius,
    temporal_radius,
    unet_radius,
)

BANDS = ["B02", "B03", "B04", "B08"]


def _scene(ny=64, nx=96, T=6, seed=0, nan_clouds=True):
    """Synthetic scene: background (0), discs (1) and squares (2) with distinct but noisy spectra, and per-date
    clouds (bright, or NaN for some) so that single dates are corrupted and the sequence helps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    cls = np.zeros((ny, nx), dtype=np.int64)
    for i, (gy, gx) in enumerate((gy, gx) for gy in range(0, ny - 8, 16) for gx in range(0, nx - 8, 16)):
        cy, cx, r = gy + 8 + rng.integers(-3, 4), gx + 8 + rng.integers(-3, 4), rng.integers(3, 7)
        if (i + gy // 16) % 2:  # a checkerboard of discs and squares: both halves hold every class
            cls[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        else:
            cls[(abs(yy - cy) <= r) & (abs(xx - cx) <= r)] = 2
    spectra = np.array([[0.05, 0.08, 0.06, 0.30], [0.09, 0.10, 0.11, 0.22], [0.12, 0.14, 0.17, 0.16]])
    v = spectra[cls].transpose(2, 0, 1)[None].repeat(T, 0)  # (T, B, y, x)
    v = v + 0.02 * rng.standard_normal(v.shape)
    for t in range(T):
        for _ in range(3):
            cy, cx, r = rng.integers(0, ny), rng.integers(0, nx), rng.integers(6, 14)
            c = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            v[t][:, c] = np.nan if (nan_clouds and t % 2) else 0.5 + 0.03 * rng.standard_normal((v.shape[1], c.sum()))
    y = 5_000_000.0 - 10.0 * np.arange(ny) - 5.0
    x = 400_000.0 + 10.0 * np.arange(nx) + 5.0
    img = xr.DataArray(v.astype(np.float32), dims=("time", "band", "y", "x"), name="reflectance",
                       coords={"time": pd.date_range("2021-05-01", periods=T, freq="5D"), "band": BANDS,
                               "y": y, "x": x},
                       attrs={"crs": "EPSG:32635", "transform": [10.0, 0.0, 400_000.0, 0.0, -10.0, 5_000_000.0]})
    lab = xr.DataArray(cls, dims=("y", "x"), coords={"y": y, "x": x})
    return img, lab


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def trained(scene):
    """A mapper trained on the left half (right half unlabelled, held out)."""
    img, lab = scene
    train = lab.where(lab.x < float(lab.x[48]), -1)
    calls = []
    mapper = train_mapper(img, train, seq_len=4, fcn_epochs=12, temporal_epochs=6, seed=0,
                          progress=lambda done, total: calls.append((done, total)))
    return mapper, calls


@pytest.fixture(scope="module")
def others(scene):
    """Small mappers of the other architectures (the paper's; inputs + probabilities with 3×3 kernels), for the
    contracts that do not need accuracy (halo, save/load)."""
    img, lab = scene
    kw = dict(seq_len=4, fcn_epochs=2, temporal_epochs=2, base=8, depth=2, seed=0)
    return {"paper": train_mapper(img, lab, architecture="paper", residual_head=False, **kw),
            "mixed": train_mapper(img, lab, architecture="inputs+probabilities", head_kernel=3, **kw)}


# ------------------------------------------------------------------------------------------ modules
def test_unet_shapes_and_alignment():
    net = UNet(4, 3, base=4, depth=2)
    assert net(torch.zeros(2, 4, 32, 48)).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 4, 30, 32))


def test_convlstm_and_head_shapes():
    lstm = ConvLSTM(3, 5)
    assert lstm(torch.zeros(4, 2, 3, 10, 12)).shape == (4, 2, 5, 10, 12)
    head = TemporalHead(3)
    assert head.hidden == 8
    assert head(torch.rand(4, 2, 3, 10, 12)).shape == (2, 3, 10, 12)


def test_receptive_radius_bounds_the_true_dependence():
    torch.manual_seed(0)
    net, head = UNet(2, 2, base=4, depth=2).double(), TemporalHead(2, hidden=3).double()
    x = torch.randn(3, 2, 64, 64, dtype=torch.double, requires_grad=True)
    maps = torch.softmax(net(x), dim=1)[:, None]
    head(maps)[0, :, 33, 34].sum().backward()
    ys, xs = torch.nonzero(x.grad.abs().sum((0, 1)) > 0, as_tuple=True)
    reach = max(int((ys - 33).abs().max()), int((xs - 34).abs().max()))
    assert reach <= receptive_radius(depth=2, seq_len=3)
    assert reach > unet_radius(2) // 2  # the bound is not vacuous
    assert receptive_radius(depth=3, seq_len=5) == unet_radius(3) + 10


def test_sequence_head_per_pixel_and_radius():
    torch.manual_seed(0)
    head = SequenceHead(3, 4).eval()
    assert head.kernel == 1 and head.receptive_radius(12) == 0 and temporal_radius(5, kernel=1) == 0
    seq = torch.randn(5, 1, 3, 6, 7)
    whole = head(seq)
    assert whole.shape == (1, 4, 6, 7)
    column = head(seq.reshape(5, 1, 3, 42, 1))  # the pixels as one column: per-pixel, the same logits
    assert torch.allclose(column.reshape(1, 4, 6, 7), whole, atol=1e-6)
    # 3×3 kernels: the dependence reaches T + layers - 1 px, within the (conservative) layers · T bound
    head3 = SequenceHead(2, 2, hidden=3, kernel=3).double()
    x = torch.randn(4, 1, 2, 40, 40, dtype=torch.double, requires_grad=True)
    head3(x)[0, :, 20, 21].sum().backward()
    ys, xs = torch.nonzero(x.grad.abs().sum((0, 1, 2)) > 0, as_tuple=True)
    reach = max(int((ys - 20).abs().max()), int((xs - 21).abs().max()))
    assert reach == 4 + 2 - 1 and head3.receptive_radius(4) == 8
    assert receptive_radius(depth=3, seq_len=12, kernel=1, unet=False) == 0
    assert receptive_radius(depth=3, seq_len=5, kernel=3, unet=False) == 10
    with pytest.raises(ValueError, match="odd kernel"):
        SequenceHead(3, 2, kernel=2)


def test_class_weights():
    t = np.array([0] * 90 + [1] * 10 + [-1] * 5)
    assert _class_weights(t, np.array([0, 1]), "none") == []
    np.testing.assert_allclose(_class_weights(t, np.array([0, 1]), "balanced"), [100 / 180, 100 / 20])
    np.testing.assert_allclose(_class_weights(t, np.array([0, 1]), "sqrt"), np.sqrt([100 / 180, 100 / 20]))
    torch.manual_seed(0)
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    w = torch.tensor([1.0, 3.0])
    assert torch.allclose(joint_loss(logits, target, alpha=1.0, weight=w), F.cross_entropy(logits, target, weight=w))


def test_joint_loss_ignores_unlabelled_and_reduces_to_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :3] = -1
    ce = F.cross_entropy(logits, target, ignore_index=-1)
    assert torch.allclose(joint_loss(logits, target, alpha=1.0), ce)
    base = joint_loss(logits, target, alpha=0.5)
    changed = logits.detach().clone()
    changed[:, :, :3] = 100 * torch.randn(2, 3, 3, 8)  # only unlabelled pixels change
    assert torch.allclose(joint_loss(changed, target, alpha=0.5), base)
    base.backward()
    assert torch.all(logits.grad[:, :, :3] == 0) and torch.isfinite(logits.grad).all()
    perfect = 50 * F.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2).float()
    assert float(joint_loss(perfect, target, alpha=0.5)) < 1e-4
    assert float(joint_loss(logits.detach(), torch.full_like(target, -1))) == 0.0


def test_augment_keeps_images_and_labels_aligned():
    y = torch.arange(48).reshape(6, 8)
    x = y.float()[None, None].repeat(3, 2, 1, 1)  # (T, C, H, W)
    for k in range(4):
        for flip in (False, True):
            xa, ya = _augment(x, y, k, flip)
            assert torch.equal(xa[2, 1], ya.float())


def test_aligned_chunks():
    assert _halo_chunks((64, 64, 22), 8, 64) == (64, 86)
    assert _halo_chunks((50, 50, 50), 8, 16) == (48, 48, 54)
    assert _halo_chunks((40, 40), 8, 64) == (80,)
    assert _halo_chunks((64, 64, 30), 8, 24) == (64, 64, 30)


def test_default_epochs_and_patch_scale_with_image():
    assert default_epochs(100, 100, 64) == (40, 20)
    assert default_epochs(10980, 10980, 512) == (40, 20)
    assert default_epochs(20000, 20000, 512) == (60, 30)
    assert default_patch(10980, 10980) == 512 and default_patch(194, 226) == 64 and default_patch(600, 900) == 200
    assert default_patch(40, 100) == 40 and default_patch(30, 30, multiple=8) == 24


def test_residual_head_starts_as_the_temporal_average():
    torch.manual_seed(0)
    seq = torch.softmax(torch.randn(5, 2, 3, 12, 12), dim=2)
    head = TemporalHead(3, residual=True)
    assert torch.allclose(torch.softmax(head(seq), dim=1), seq.mean(0), atol=1e-5)
    plain = TemporalHead(3)
    assert not torch.allclose(torch.softmax(plain(seq), dim=1), seq.mean(0), atol=1e-2)


# ------------------------------------------------------------------------------------------ training
def test_training_learns_held_out_area(trained, scene):
    mapper, calls = trained
    img, lab = scene
    truth = lab.values[:, 56:]
    chance = max(np.mean(truth == c) for c in range(3))
    for temporal in (True, False):
        pred = mapper.classes[mapper.predict(img, temporal=temporal).argmax("class").values][:, 56:]
        acc = float(np.mean(pred == truth))
        assert acc > max(0.85 if temporal else 0.8, chance + 0.2), (temporal, acc, chance)
    assert calls[-1] == (18, 18) and len(calls) == 18
    assert len(mapper.losses["fcn"]) == 12 and len(mapper.losses["temporal"]) == 6
    assert mapper.losses["fcn"][-1] < mapper.losses["fcn"][0]
    assert mapper.train_seconds > 0
    assert mapper.config.classes == [0, 1, 2] and mapper.config.patch == 64
    cfg = mapper.config  # the default: a per-pixel ConvLSTM head on the inputs, class-weighted
    assert (cfg.architecture, cfg.head_kernel, cfg.class_weight, cfg.hidden) == ("inputs", 1, "sqrt", 16)
    assert isinstance(mapper.head, SequenceHead) and len(cfg.class_weights) == 3
    assert cfg.halo(temporal=True) == 0 and cfg.halo(temporal=False) == 56


def test_predict_probabilities_and_georeference(trained, scene):
    mapper, _ = trained
    img, _ = scene
    for temporal in (True, False):
        p = mapper.predict(img, temporal=temporal)
        assert p.dims == ("class", "y", "x") and p.dtype == np.float32 and p.name == "probability"
        assert p["class"].values.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(p.x.values, img.x.values)
        np.testing.assert_array_equal(p.y.values, img.y.values)
        assert p.attrs["crs"] == "EPSG:32635" and p.attrs["transform"] == img.attrs["transform"]
        assert np.isfinite(p.values).all() and (p.values >= 0).all()
        np.testing.assert_allclose(p.sum("class").values, 1.0, atol=1e-5)
    a, b = mapper.predict(img, temporal=True), mapper.predict(img, temporal=False)
    assert not np.allclose(a.values, b.values)


def test_predict_keeps_rioxarray_spatial_ref(trained, scene):
    pytest.importorskip("rioxarray")
    mapper, _ = trained
    img, _ = scene
    geo = img.rio.write_crs("EPSG:32635")
    p = mapper.predict(geo, temporal=False)
    assert "spatial_ref" in p.coords and p.rio.crs.to_epsg() == 32635


@pytest.mark.parametrize("arch", ["inputs", "paper", "mixed"])
@pytest.mark.parametrize("temporal", [True, False])
def test_chunked_prediction_equals_whole_image(trained, others, temporal, arch):
    mapper = trained[0] if arch == "inputs" else others[arch]
    if arch != "inputs":
        assert mapper.config.halo(temporal=True) == int(np.ceil((unet_radius(2) + 8) / 4) * 4)  # U-Net + 2·T
    img, _ = _scene(150, 170, T=5, seed=3)
    whole = mapper.predict(img, temporal=temporal)
    lazy = mapper.predict(img.chunk({"time": 1, "y": 64, "x": 64}), temporal=temporal)
    assert lazy.chunks is not None and len(lazy.chunks[1]) >= 2 and len(lazy.chunks[2]) >= 2
    assert all(c % mapper.config.multiple == 0 for c in lazy.chunks[1][:-1] + lazy.chunks[2][:-1])
    chunked = lazy.compute()
    agree = float((whole.argmax("class") == chunked.argmax("class")).mean())
    assert agree >= 0.999
    np.testing.assert_allclose(chunked.values, whole.values, atol=1e-4)
    assert chunked.attrs["crs"] == "EPSG:32635"
    np.testing.assert_array_equal(chunked.x.values, img.x.values)
    # odd chunks are realigned to multiples of 2**depth
    odd = mapper.predict(img.chunk({"y": 50, "x": 70}), temporal=temporal)
    np.testing.assert_allclose(odd.values, whole.values, atol=1e-4)
    # an image narrower than the halo: one chunk along y, no overlap needed there
    strip = img.isel(y=slice(0, 40))
    one = mapper.predict(strip.chunk({"y": -1, "x": 80}), temporal=temporal, threads=1).compute()
    np.testing.assert_allclose(one.values, mapper.predict(strip, temporal=temporal).values, atol=1e-4)


def test_save_load_round_trip(trained, scene, tmp_path):
    mapper, _ = trained
    img, _ = scene
    path = mapper.save(tmp_path / "mapper.pt")
    assert isinstance(torch.load(path, weights_only=True), dict)
    back = load_mapper(path, device="cpu")
    assert isinstance(back, Mapper) and isinstance(back.config, MapperConfig)
    assert back.config == mapper.config
    for temporal in (True, False):
        np.testing.assert_array_equal(back.predict(img, temporal=temporal).values,
                                      mapper.predict(img, temporal=temporal).values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapper.pt"]  # atomic save: no temporary file left
    with pytest.raises(InputError, match="does not exist"):
        load_mapper(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a saved s2pipe mapper"):
        load_mapper(tmp_path / "other.pt")


def test_other_architectures_and_old_files_load(others, scene, tmp_path):
    """The paper's model stays available; files written before ``architecture`` existed (no such config fields)
    load as the paper's model and predict as before."""
    img, _ = scene
    paper, mixed = others["paper"], others["mixed"]
    assert isinstance(paper.head, TemporalHead) and not paper.head.residual
    assert (paper.config.architecture, paper.config.head_kernel, paper.config.class_weight) == ("paper", 3, "none")
    assert isinstance(mixed.head, SequenceHead) and mixed.head.lstm.cells[0].conv.in_channels == 4 + 3 + 16
    for m in (paper, mixed):
        back = load_mapper(m.save(tmp_path / f"{m.config.architecture}.pt"))
        assert back.config == m.config
        np.testing.assert_array_equal(back.predict(img).values, m.predict(img).values)
    payload = torch.load(tmp_path / "paper.pt", weights_only=True)
    cfg = json.loads(payload["config"])
    for k in ("architecture", "head_kernel", "class_weight", "class_weights", "head_dropout", "residual_head"):
        cfg.pop(k)
    payload["config"] = json.dumps(cfg)
    torch.save(payload, tmp_path / "old.pt")
    old = load_mapper(tmp_path / "old.pt")
    assert old.config.architecture == "paper" and not old.config.residual_head
    np.testing.assert_array_equal(old.predict(img).values, paper.predict(img).values)


def test_determinism_dask_input_and_band_subset():
    img, lab = _scene(40, 48, T=4, seed=5)
    kw = dict(seq_len=3, fcn_epochs=1, temporal_epochs=1, bands=["B03", "B08"], batch_size=2)
    a = train_mapper(img, lab, seed=7, **kw)
    b = train_mapper(img.chunk({"y": 16}), lab, seed=7, **kw)
    c = train_mapper(img, lab, seed=8, **kw)
    assert a.config.bands == ["B03", "B08"] and a.config.patch == 40
    for name, t in a.fcn.state_dict().items():
        assert torch.equal(t, b.fcn.state_dict()[name])
    for name, t in a.head.state_dict().items():
        assert torch.equal(t, b.head.state_dict()[name])
    assert a.losses == b.losses
    assert any(not torch.equal(t, c.fcn.state_dict()[n]) for n, t in a.fcn.state_dict().items())
    p = a.predict(img)  # selects the training bands
    np.testing.assert_array_equal(p.values, b.predict(img.sel(band=["B08", "B03", "B02"])).values)


# ------------------------------------------------------------------------------------------ errors
def test_clear_errors(trained, scene):
    mapper, _ = trained
    img, lab = scene
    with pytest.raises(InputError, match="at least 5 are needed"):
        train_mapper(img.isel(time=slice(0, 4)), lab, seq_len=5)
    with pytest.raises(InputError, match="labels is 64×90"):
        train_mapper(img, lab.isel(x=slice(0, 90)))
    shifted = lab.assign_coords(x=lab.x + 5.0)
    with pytest.raises(InputError, match="x coordinate differs"):
        train_mapper(img, shifted)
    with pytest.raises(InputError, match="at least 2 are needed"):
        train_mapper(img, xr.where(lab >= 0, 1, -1))
    with pytest.raises(InputError, match="dims"):
        train_mapper(img.isel(time=0), lab)
    with pytest.raises(InputError, match="dims"):
        mapper.predict(img.rename(band="channel"))
    with pytest.raises(InputError, match="labels has dims"):
        train_mapper(img, lab.expand_dims("time"))
    with pytest.raises(InputError, match="patch=60"):
        train_mapper(img, lab, patch=60)
    with pytest.raises(InputError, match="bands="):
        train_mapper(img, lab, bands=["B11"])
    with pytest.raises(InputError, match="at least 4 are needed"):
        mapper.predict(img.isel(time=slice(0, 3)))
    with pytest.raises(InputError, match="lacks the training bands"):
        mapper.predict(img.sel(band=["B02", "B03"]))
    with pytest.raises(InputError, match="multiple of 2\\*\\*depth"):
        mapper.predict(img.chunk({"y": 32}), halo=12)
    with pytest.raises(InputError, match="architecture='fcn'"):
        train_mapper(img, lab, architecture="fcn")
    with pytest.raises(InputError, match="head_kernel=2 must be odd"):
        train_mapper(img, lab, head_kernel=2)
    with pytest.raises(InputError, match="3×3 kernels"):
        train_mapper(img, lab, architecture="paper", head_kernel=1)
    with pytest.raises(InputError, match="class_weight='inverse'"):
        train_mapper(img, lab, class_weight="inverse")


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    """``Mapper.save`` goes through ``s2pipe.ml.weights.save_payload``: an interrupted write leaves the previous file."""
    import s2pipe.ml.weights as weights

    mapper, _ = trained
    path = mapper.save(tmp_path / "m.pt")
    before = path.read_bytes()

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(weights.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        mapper.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_tree_models_refuse_unet_options(scene):
    """U-Net-only options given to a tree mapper raise instead of being ignored (their defaults pass)."""
    img, lab = scene
    for kw, named in ((dict(epochs=3), "['epochs']"), (dict(device="cpu"), "['device']"),
                      (dict(patch=64, architecture="paper"), "['patch', 'architecture']"),
                      (dict(head_kernel=3, lr=1e-3), "['lr', 'head_kernel']")):
        with pytest.raises(InputError) as err:
            train_mapper(img, lab, model="random-forest", n_estimators=5, n_jobs=1, **kw)
        assert f"{named} are options of model='unet-convlstm', not of model='random-forest'" in str(err.value)
    m = train_mapper(img, lab, model="random-forest", seq_len=2, seed=0, patch=512, lr=3e-3, architecture="inputs",
                     n_estimators=5, n_jobs=1)  # the defaults spelt out are fine
    assert m.predict(img).sizes["class"] == 3


def test_tiled_probability_maps_equal_whole(trained, scene, monkeypatch):
    import s2pipe.mapping as mapping

    mapper, _ = trained
    img, _ = scene
    z = torch.from_numpy(mapper._standardize(img.values))
    whole = mapping._probability_maps(mapper, z)
    monkeypatch.setattr(mapping, "_WHOLE_PIXELS", 0)
    tiled = mapping._probability_maps(mapper, z, tile=32)
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_epochs_split_between_stages():
    img, lab = _scene(32, 32, T=3, seed=2)
    m = train_mapper(img, lab, seq_len=2, epochs=3, batch_size=16)
    assert (m.config.fcn_epochs, m.config.temporal_epochs) == (2, 1)
    assert len(m.losses["fcn"]) == 2 and len(m.losses["temporal"]) == 1
