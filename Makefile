# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   - build the demo region's gap-filled Zarr cube end to end (local STAC API -> Prefect flow -> Dask), then map its roads and mangroves
#   make test   - run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean gis-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build lies on local disk; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/s2pipe demo

# Debian's gdal-bin: GDAL 3.6, the reader (as in QGIS 3.22) the GIS tests open the outputs with; without root or
# apt-get those tests skip (.ci/run requires them)
test: $(STAMP)
	@command -v gdalinfo >/dev/null || { test "$$(id -u)" -eq 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gdal-bin; } || \
		echo "gdal-bin not installed: the GDAL 3.6 reader tests skip"
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Headless QGIS check of the demo outputs (not part of `make test`/CI): Debian's qgis + python3-qgis (installed with
# apt-get when /usr/bin/python3 cannot import qgis.core), `make demo` outputs, one exported date; see benchmarks/gis_check.py
GIS_PYTHON ?= /usr/bin/python3
GIS_DATE ?= 2022-12-17
gis-check: $(STAMP)
	$(GIS_PYTHON) -c 'import qgis.core' 2>/dev/null || { \
		SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qgis python3-qgis; }
	test -f out/demo-cube.zarr/.s2pipe/complete && test -f out/demo-maps/new-roads.gpkg || $(VENV)/bin/s2pipe demo
	test -d out/demo-gis || $(VENV)/bin/s2pipe export out/demo-cube.zarr out/demo-gis --dates $(GIS_DATE) --bands B04,B03,B02,B08
	QT_QPA_PLATFORM=offscreen $(GIS_PYTHON) benchmarks/gis_check.py

clean:
	rm -rf out .pytest_cache
