"""Cloud masking and Cressman gap filling on the real Romania L2A series (140 dates, 100 × 100 px, SCL).

Figures measured when the test was written (gaussian, R = 10 days, SCL clear = 4, 5, 6, 7):
39.1 % of values masked; left NaN: 7.3 % on the input dates, 21.0 % on the "5D" grid (397 dates; the
2015-08-31 -> 2016-03-18 gap and other winter gaps exceed 3R). At masked dates with a clear observation
within R before and after, the median |filled - mean(before, after)| is 0.0036 / 0.0031 / 0.0033 / 0.0108
reflectance for B02 / B03 / B04 / B08, about 0.3 of the median |before - after| spread.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from s2pipe.cloudmask import mask_clouds
from s2pipe.gapfill import cressman

R_DAYS = 10


@pytest.fixture(scope="module")
def raw(shared_data):
    """The real cube in the raw layout of docs/architecture.md: "dn" uint16 (time, band, y, x), SCL last."""
    from s2pipe.synthetic.scenes import romania_raw_cube

    return romania_raw_cube(shared_data / "nrt-romania-s2l2a" / "romania_10m.npz")


@pytest.fixture(scope="module")
def refl(raw):
    return mask_clouds(raw, clear_classes=(4, 5, 6, 7))


def test_mask_matches_published_clear_fraction(raw, refl, shared_data):
    meta = json.loads((shared_data / "nrt-romania-s2l2a" / "metadata.json").read_text())
    expected = np.array(meta["cubes"]["romania_10m"]["clear_fraction_scl_4567"])
    got = np.isfinite(refl.values[:, 0]).mean(axis=(1, 2))
    np.testing.assert_allclose(got, expected, atol=6e-4)  # metadata rounds to 3 decimals
    clear = np.isfinite(refl.values)
    np.testing.assert_array_equal(refl.values[clear], (raw.values[:, :4][clear] / 1e4).astype(np.float32))
    print(f"\nRomania: {np.isnan(refl.values).mean():.1%} of values masked by SCL")


def neighbours(x: np.ndarray, days: np.ndarray):
    """Nearest valid observation before and after each date, and their distances (days), per pixel."""
    valid = np.isfinite(x)
    out = {k: np.full(x.shape, np.nan) for k in ("prev", "prev_d", "next", "next_d")}
    for order, key in ((range(len(days)), "prev"), (range(len(days) - 1, -1, -1), "next")):
        last_v = np.full(x.shape[1:], np.nan)
        last_t = np.full(x.shape[1:], np.nan)
        for i in order:
            out[key][i], out[key + "_d"][i] = last_v, np.abs(days[i] - last_t)
            last_v = np.where(valid[i], x[i], last_v)
            last_t = np.where(valid[i], days[i], last_t)
    return out


def test_cressman_fills_cloudy_dates_from_clear_neighbours(raw, refl):
    filled = cressman(refl, radius=f"{R_DAYS}D", times=None)
    x = refl.values.astype(np.float64)
    f = filled.values
    valid = np.isfinite(x)
    # kept values equal the observations, bit for bit
    np.testing.assert_array_equal(f[valid], refl.values[valid])

    days = ((refl.indexes["time"] - refl.indexes["time"][0]) / pd.Timedelta(days=1)).to_numpy()
    nb = neighbours(x, days)
    candidate = ~valid & (nb["prev_d"] <= R_DAYS) & (nb["next_d"] <= R_DAYS)
    cloudy_dn = raw.values[:, :4] / 1e4
    for b, band in enumerate(refl["band"].values):
        c = candidate[:, b]
        assert c.sum() > 10_000
        mean_nb = (nb["prev"][:, b][c] + nb["next"][:, b][c]) / 2
        diff = np.median(np.abs(f[:, b][c] - mean_nb))
        spread = np.median(np.abs(nb["prev"][:, b][c] - nb["next"][:, b][c]))
        raw_diff = np.median(np.abs(cloudy_dn[:, b][c] - mean_nb))  # what the cloudy pixel itself says
        print(f"{band}: median |filled - neighbours| {diff:.4f}, neighbour spread {spread:.4f}, "
              f"cloudy DN vs neighbours {raw_diff:.4f}")
        assert np.isfinite(f[:, b][c]).all()
        assert diff < (0.015 if band == "B08" else 0.006)
        assert diff < 0.5 * spread
        assert diff < 0.2 * raw_diff  # far closer to the clear neighbours than the cloudy value was


def test_cressman_5d_grid_and_nan_fraction(refl):
    filled, weight = cressman(refl, radius=R_DAYS, times="5D", return_weight=True)
    t = refl.indexes["time"]
    grid = pd.date_range(t[0], t[-1], freq="5D")
    np.testing.assert_array_equal(filled.indexes["time"], grid)
    assert filled.dtype == np.float32 and filled.attrs["crs"] == "EPSG:3035"
    # acquisitions that fall on the grid keep their clear values
    on_grid = t[t.isin(grid)]
    assert len(on_grid) > 100
    obs = refl.sel(time=on_grid).values
    kept = filled.sel(time=on_grid).values
    np.testing.assert_array_equal(kept[np.isfinite(obs)], obs[np.isfinite(obs)])
    # NaN exactly where no clear observation lies within 3R
    np.testing.assert_array_equal(np.isnan(filled.values), weight.values == 0)
    frac_grid = float(np.isnan(filled.values).mean())
    frac_input = float(np.isnan(cressman(refl, radius=R_DAYS).values).mean())
    frac_masked = float(np.isnan(refl.values).mean())
    print(f"\nleft NaN: {frac_input:.1%} on the input dates, {frac_grid:.1%} on the 5D grid "
          f"({len(grid)} dates); masked before filling: {frac_masked:.1%}")
    assert 0.05 < frac_input < 0.10
    assert 0.17 < frac_grid < 0.25
    assert frac_input < frac_masked / 4


def test_real_dask_path_matches(refl):
    eager = cressman(refl, times="5D")
    lazy = cressman(refl.chunk({"time": 20, "y": 50, "x": 50}), times="5D")
    assert lazy.chunks[0] == (eager.sizes["time"],)
    np.testing.assert_allclose(lazy.values, eager.values, rtol=2e-6, atol=1e-7)
