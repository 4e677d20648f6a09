"""Hostile and careless run configurations (issue 15): each is refused quickly, in bounded memory, with exit code 2
and one short ``error:`` message naming the field, the (truncated) value and the fix; nothing else escapes."""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2pipe.cli import EXIT_INPUT, app
from s2pipe.config import (
    MAX_CONFIG_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_VERTICES,
    RunConfig,
    _planned_extent,
    load_config,
)
from s2pipe.errors import InputError

GOOD = {"catalog": "local-demo", "bbox": [-80.911, 25.292, -80.889, 25.309], "start": "2021-01-01", "end": "2021-03-01"}
GOOD_YAML = "\n".join(f"{k}: {v}" for k, v in GOOD.items()) + "\n"
MEMORY_CAP = 3 << 29  # 1.5 GiB of address space; `s2pipe run` refusing a config peaks at ~100 MB resident (runs in 768 MiB)
SECONDS = 2.0  # validation time allowed per configuration (in process: the CLI's start-up is imports)


def _bomb(levels: int) -> str:
    """A "billion laughs": each level a list of 9 aliases of the level below (9**levels strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return GOOD_YAML + "\n".join(lines) + "\n"  # l0..l8: unknown settings, each repeated in the old message


def _ring(n: int) -> list:
    """Polygon coordinates: one closed ring of ``n`` vertices inside the demo region."""
    angles = [2 * math.pi * k / n for k in range(n)]
    pts = [[round(-80.90 + 0.01 * math.cos(a), 6), round(25.30 + 0.008 * math.sin(a), 6)] for a in angles]
    return [pts + [pts[0]]]


GEOMETRY = GOOD_YAML.replace("bbox:", "# bbox:")

# name -> (YAML text, words the one error line must hold)
BAD = {
    "billion-laughs": (_bomb(9), ["alias", "*l0", "write the value out"]),
    "alias-5-levels": (_bomb(5), ["alias"]),
    "recursive-alias": (GOOD_YAML + "gapfill: &g {radius: *g}\n", ["alias", "*g"]),
    "merge-key": (GOOD_YAML + "base: &b {radius: 10D}\ngapfill: {<<: *b}\n", ["alias", "merge"]),
    "file-over-1MiB": (GOOD_YAML + "bands: [" + "B04, " * (MAX_CONFIG_BYTES // 5) + "]\n",
                       ["larger than 1,048,576 bytes"]),
    "20k-bands": (GOOD_YAML + "bands: [" + "B04, " * 20_000 + "]\n", ["bands", "20,000", "at most once"]),
    "deep-nesting": (GOOD_YAML + "gapfill: " + "[" * 200 + "]" * 200 + "\n", ["deeper than 32"]),
    "60k-values": (GOOD_YAML + "clear_classes: [" + "4, " * 60_000 + "]\n", ["more than 50,000", "bbox"]),
    "long-value": (GOOD_YAML + "output: " + "x" * 100_000 + "\n", ["100,000 characters"]),
    "huge-int": (GOOD_YAML + "dask: {n_workers: " + "9" * 4000 + "}\n", ["dask.n_workers", "digits"]),
    "12k-vertices": (GEOMETRY + f"geometry: {{type: Polygon, coordinates: {_ring(12_000)}}}\n",
                     ["geometry", f"more than {MAX_VERTICES:,} vertices", "simplify", "bbox"]),
    "resolution-0.0001": (GOOD_YAML + "resolution: 0.0001\n", ["resolution 0.0001", "1 m .. 10 km", "resolution: 10"]),
    "resolution-10-degrees": (GOOD_YAML + "epsg: 4326\nresolution: 10\n", ["resolution 10", "degree", "EPSG:4326"]),
    "grid-too-large": (GOOD_YAML.replace("[-80.911, 25.292, -80.889, 25.309]", "[-20, 30, 40, 70]"),
                       ["planned grid", "values per date", "max_grid_values 10,000,000,000", "coarser resolution"]),
    "radius-text-10": (GOOD_YAML + "gapfill: {radius: '10'}\n", ["gapfill.radius", "'10'", "no unit", "'10D' for 10 days"]),
    "radius-number-10": (GOOD_YAML + "gapfill: {radius: 10}\n", ["gapfill.radius", "no unit", "'10D' for 10 days"]),
    "radius-nan": (GOOD_YAML + "gapfill: {radius: nan}\n", ["gapfill.radius", "'nan'", "not a time span"]),
    "times-1-minute": (GOOD_YAML + "gapfill: {times: 1min}\n", ["gapfill.times", "84,961 output dates", "longer step"]),
    "date-as-number": (GOOD_YAML.replace("start: 2021-01-01", "start: 20210101"), ["start", "20210101", "YYYY-MM-DD"]),
    "memory-without-unit": (GOOD_YAML + "dask: {memory_limit: '4'}\n", ["dask.memory_limit", "no unit", "'4GiB'"]),
    "times-of-centuries": (GOOD_YAML + "gapfill: {times: 99999999999999999999D}\n", ["gapfill.times", "frequency"]),
    "20k-unknown-keys": (GOOD_YAML + "".join(f"k{i}: {i}\n" for i in range(20_000)), ["Extra inputs", "more"]),
    "not-utf8": (GOOD_YAML + "output: \xff\xfe\n", ["not valid YAML"]),
    "python-tag": (GOOD_YAML + "output: !!python/object/apply:os.system [ls]\n", ["not valid YAML", "python/object"]),
    "bad-date": (GOOD_YAML.replace("2021-03-01", "2021-13-45"), ["month must be in 1..12"]),
    "band-the-catalog-lacks": (GOOD_YAML + "bands: [B01, B04]\n", ["no asset for B01", "B02, B03", "another catalog"]),
}
SUBPROCESS = ["billion-laughs", "alias-5-levels", "20k-bands", "12k-vertices", "resolution-0.0001", "radius-text-10"]
"""The cases run as `s2pipe run` under a memory cap (the others run the same CLI code in process)."""


def _write(tmp_path: Path, name: str) -> Path:
    text = BAD[name][0]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text.encode("latin-1") if name == "not-utf8" else text.encode())
    return path


def _check_message(text: str, words) -> None:
    assert len(text.encode()) < MAX_MESSAGE_CHARS, f"{len(text)} characters: {text[:300]}..."
    assert sum(line.startswith("error:") for line in text.splitlines()) == 1, text
    assert "Traceback" not in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_file_is_refused_quickly_in_one_short_message(tmp_path, name):
    path = _write(tmp_path, name)
    t0 = time.process_time()  # CPU time of this (single-threaded) validation: other load on the machine can't stretch it
    with pytest.raises(InputError) as err:
        load_config(path)
    seconds = time.process_time() - t0
    assert seconds < SECONDS, f"{name}: load_config took {seconds:.2f} s of CPU"
    _check_message(f"error: {err.value}", BAD[name][1])
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(tmp_path / "cube.zarr")])
    assert result.exit_code == EXIT_INPUT, result.output
    _check_message(result.output, BAD[name][1])
    assert not (tmp_path / "cube.zarr").exists()


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.parametrize("name", SUBPROCESS)
def test_s2pipe_run_refuses_it_within_a_memory_cap(tmp_path, name):
    path = _write(tmp_path, name)
    exe = Path(sys.executable).with_name("s2pipe")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "run", str(path)], capture_output=True, text=True, timeout=120, env=env, check=False,
                          preexec_fn=_cap_memory, cwd=tmp_path)
    assert proc.returncode == EXIT_INPUT, proc.stderr[-2000:]
    _check_message(proc.stderr, BAD[name][1])
    assert proc.stdout == ""


def test_a_good_config_file_and_the_examples_still_validate(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_YAML + "gapfill: {radius: 240h, times: 5D}\ndask: {memory_limit: 4 GiB}\n")
    cfg = load_config(path)
    assert cfg.gapfill.radius == "240h" and cfg.max_grid_values == 10_000_000_000 and "max_grid_values" not in cfg.parameters()
    for example in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        load_config(example)
    cfg = load_config({**GOOD, "bbox": None, "geometry": {"type": "Polygon", "coordinates": _ring(MAX_VERTICES - 1)}})
    assert len(cfg.geometry["coordinates"][0]) == MAX_VERTICES


@pytest.mark.parametrize("radius", ["10D", "10d", "240h", "10 days", "1 days 12:00:00", "P10D", "1h"])
def test_durations_with_a_unit_are_accepted(radius):
    assert load_config({**GOOD, "gapfill": {"radius": radius}}).gapfill.radius == radius


@pytest.mark.parametrize("radius", ["10", 10, 10.5, " 7 ", "1e3", "-10D", "1ns", "100000D", "NaT", "ten days", None, [10]])
def test_durations_without_a_unit_or_out_of_range_are_refused(radius):
    with pytest.raises(InputError, match="gapfill.radius") as err:
        load_config({**GOOD, "gapfill": {"radius": radius}})
    assert len(str(err.value)) < 400


def test_max_grid_values_is_the_limit_of_the_planned_grid():
    region = {**GOOD, "bbox": [21.0, 45.0, 22.0, 46.0]}  # ~78 km x 111 km: 7,836 x 11,058 px at 10 m
    load_config(region)
    with pytest.raises(InputError, match=r"planned grid is 7,8\d\d x 11,0\d\d px x 11 bands .* max_grid_values 100,000,000;"):
        load_config({**region, "max_grid_values": 100_000_000})
    load_config({**region, "max_grid_values": 100_000_000, "resolution": 40, "bands": ["B04", "B08"]})


@pytest.mark.parametrize("bbox", [(22.14, 45.20, 22.17, 45.22), (-80.95, 25.2, -80.8, 25.4), (5.0, 59.0, 7.9, 61.0),
                                  (-61.0, -12.0, -58.0, -9.0), (10.0, 69.5, 14.0, 71.0), (-1.0, -1.0, 1.0, 1.0)])
def test_the_planned_grid_is_within_1_5x_of_the_utm_grid(bbox):
    """With epsg null the cube is on the scenes' UTM zone: the cheap estimate is within 1.5x of the bbox projected
    there (as s2pipe.cube projects it)."""
    from pyproj import Transformer

    lon = (bbox[0] + bbox[2]) / 2
    epsg = (32600 if bbox[1] + bbox[3] > 0 else 32700) + int((lon + 180) // 6) + 1
    x0, y0, x1, y1 = Transformer.from_crs(4326, epsg, always_xy=True).transform_bounds(*bbox, densify_pts=21)
    w, h = _planned_extent(bbox, None)
    assert 1 / 1.5 < (w * h) / ((x1 - x0) * (y1 - y0)) < 1.5
    w, h = _planned_extent(bbox, epsg)
    assert math.isclose(w * h, (x1 - x0) * (y1 - y0))


def _deep(n: int, make):
    out = inner = make()
    for _ in range(n):
        nxt = make()
        if isinstance(inner, list):
            inner.append(nxt)
        else:
            inner["k"] = nxt
        inner = nxt
    return out


def _hostile_values(rng: random.Random) -> list:
    return [
        None, True, False, 0, -1, 1, 7, 2**63, 10**400, -(10**30), 0.0, -0.0, 1e-300, 1e308, 0.0001,
        float("nan"), float("inf"), float("-inf"), "", " ", "10", "10D", "-5D", "1ns", "today", "null", "\x00", "B04",
        "é" * rng.choice([3, 5000]), "\U0001f6f0" * 200, "\u202eB04", "a" * 100_000, "s3://key:secret@bucket/c.zarr",
        "2021-02-30", "2021-01-01T05:00", "1e999", "99999999999999999999D", "MS", "1.5D", "P10D", [], [1] * rng.choice([4, 100_000]), ["B04"] * 50_000,
        [float("nan")] * 4, [-200, -100, 200, 100], [0, 0, 0, 0], (1, 2, 3, 4), {}, {"a": 1}, {"x" * 5000: 1},
        _deep(rng.choice([50, 3000]), list), _deep(rng.choice([50, 3000]), dict), b"bytes", dt.date(1, 1, 1),
        dt.datetime(2021, 1, 1, 5), {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        {"type": "Polygon", "coordinates": _deep(2000, list)}, {"type": "Polygon", "coordinates": [[[0, 0]] * 30_000]},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[[[1, 1], [2, 1], [2, 2], [1, 1]]]]}},
        {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, {str(i): i for i in range(2000)},
    ]


FIELDS = [*RunConfig.model_fields, "gapfill.radius", "gapfill.times", "gapfill.kernel", "normalize.method",
          "normalize.percentile", "dask.n_workers", "dask.memory_limit", "dask.address", "storage.endpoint_url",
          "bbox.0", "bbox.3", "bands.0", "unknown", "\u00e9\u00e8", "x" * 3000]


def _mutate(rng: random.Random, values: list) -> dict:
    data = {**GOOD, "gapfill": {"radius": "10D", "times": "5D"}, "dask": {"n_workers": 1}, "bbox": list(GOOD["bbox"]),
            "bands": ["B04", "B08"]}
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(FIELDS)
        value = rng.choice(values)
        for _ in range(rng.choice([0, 0, 0, 1, 5])):  # sometimes wrapped in lists
            value = [value]
        head, _, tail = field.partition(".")
        if rng.random() < 0.1:
            data.pop(head, None)
        elif tail.isdigit() and isinstance(data.get(head), list) and len(data[head]) > int(tail):
            data[head] = [*data[head][:int(tail)], value, *data[head][int(tail) + 1:]]
        elif tail and isinstance(data.get(head), dict):
            data[head] = {**data[head], tail: value}
        elif tail:
            data[head] = {tail: value}
        else:
            data[field] = value
    return data


def _mutate_text(rng: random.Random) -> bytes:
    """A valid YAML configuration with a few random edits of its bytes (YAML syntax, aliases, control bytes)."""
    text = bytearray((GOOD_YAML + "gapfill: {radius: 10D, times: 5D}\nbands: [B04, B08]\n").encode())
    pieces = [b"&a ", b"*a", b"[", b"]", b"{", b"}", b":", b",", b"- ", b"\n", b"'", b'"', b"!!", b"!!binary ", b"\x00",
              b"\xff", b"\t", b"<<: ", b"? ", b"%YAML 1.1\n", b"---\n", b"1e400", "é".encode(), b"9" * 500]
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text))
        if rng.random() < 0.3:
            del text[at:at + rng.randint(1, 8)]
        else:
            text[at:at] = rng.choice(pieces)
    return bytes(text)


def test_fuzzed_configs_give_a_runconfig_or_one_short_input_error(tmp_path):
    """300 seeded mutations (types, sizes, nesting, unicode, huge / negative / NaN / inf numbers; 100 of them as
    edited YAML bytes): each returns a RunConfig or raises InputError with a message under 2 KB, quickly."""
    rng = random.Random(15)
    values = _hostile_values(rng)
    outcomes = {"ok": 0, "refused": 0}
    slowest = 0.0
    for case in range(300):
        if case % 3 == 2:
            source = tmp_path / f"case{case}.yaml"
            source.write_bytes(_mutate_text(rng))
        else:
            source = _mutate(rng, values)
        t0 = time.perf_counter()
        try:
            load_config(source)
            outcomes["ok"] += 1
        except InputError as exc:
            outcomes["refused"] += 1
            assert len(str(exc)) < MAX_MESSAGE_CHARS, f"case {case}: {str(exc)[:300]}"
        except Exception as exc:  # the point of the test
            raise AssertionError(f"case {case}: {type(exc).__name__}: {str(exc)[:300]} for {str(source)[:300]}") from exc
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < SECONDS, f"slowest case {slowest:.2f} s"
    assert outcomes["ok"] >= 10 and outcomes["refused"] >= 100, outcomes


def test_the_largest_geometry_accepted_fits_in_a_prefect_flow_parameter():
    """Prefect refuses flow parameters over 512 KB (a 422 traceback): the largest geometry accepted, with
    coordinates at full double precision, stays well inside it."""
    import json

    rng = random.Random(0)
    n = MAX_VERTICES - 1
    ring = [[-80.9 + 0.01 * math.cos(2 * math.pi * k / n) + rng.random() * 1e-9,
             25.3 + 0.008 * math.sin(2 * math.pi * k / n) + rng.random() * 1e-9] for k in range(n)]
    cfg = load_config({**{k: v for k, v in GOOD.items() if k != "bbox"},
                       "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}})
    size = len(json.dumps(cfg.model_dump(mode="json")))
    assert size < 450_000, size


def test_a_large_geometry_travels_by_reference_as_a_file(tmp_path):
    """A 120,000-vertex region as a GeoJSON file: accepted quickly; the configuration (the flow's parameter)
    holds only the path; the store's parameters hold the geometry's digest, the same for a moved copy; a pipe or
    a folder is refused unread."""
    import json
    import os
    import shutil
    import time

    from s2pipe.search import parse_region

    n = 120_000
    ring = [[-80.9 + 0.01 * math.cos(2 * math.pi * k / n), 25.3 + 0.008 * math.sin(2 * math.pi * k / n)]
            for k in range(n)]
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}}]}))
    base = {k: v for k, v in GOOD.items() if k != "bbox"}
    t0 = time.monotonic()
    cfg = load_config({**base, "geometry": str(path)})
    assert time.monotonic() - t0 < SECONDS
    assert len(cfg.model_dump_json()) < 2000 and cfg.geometry == str(path)
    assert parse_region(geometry=cfg.region_geometry()).area > 0
    digest = cfg.parameters()["geometry"]["geojson_sha256"]
    moved = tmp_path / "elsewhere.json"
    shutil.copy(path, moved)
    assert load_config({**base, "geometry": str(moved)}).parameters() == cfg.parameters() and len(digest) == 64
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for bad, words in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                       (tmp_path / "missing.json", "cannot be read")):
        with pytest.raises(InputError, match=words):
            load_config({**base, "geometry": str(bad)})
