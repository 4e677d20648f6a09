"""The package layout keeps its promises: a lazy public API, ``__all__`` everywhere, Prefect only in the flows,
torch networks without I/O, and test modules that import shared code only from ``conftest`` / ``helpers``."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "s2pipe"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "s2pipe":
                found |= {f"s2pipe.{a.name}" for a in node.names}
    return found


def test_import_s2pipe_loads_neither_torch_nor_dask_nor_prefect_and_every_public_name_resolves():
    probe = (
        "import json, sys, s2pipe\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dask', 'distributed', 'prefect', 'zarr'})\n"
        "names = {n: getattr(s2pipe, n).__module__ for n in s2pipe.__all__ if n != '__version__'}\n"
        "print(json.dumps({'heavy': heavy, 'names': names}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [], f"`import s2pipe` imported {got['heavy']}"
    import s2pipe

    for name, module in got["names"].items():
        assert module.startswith("s2pipe."), (name, module)
    assert {"cressman", "build_cube", "write_cube", "fit_dynamics", "train_mapper", "DemoConfig", "generate_demo",
            "InputError", "TransientError", "S2PipeError"} <= set(s2pipe.__all__)
    from s2pipe import errors

    assert set(errors.__all__) <= set(s2pipe.__all__), "every error is exported by s2pipe"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        s2pipe.nope  # noqa: B018


def _code_modules() -> list[tuple[str, Path]]:
    """The modules that define something: all but the folders' docstring-only ``__init__.py``."""
    return [(m, p) for m, p in _modules() if p.name != "__init__.py" or "import" in p.read_text()]


@pytest.mark.parametrize("name,path", _code_modules(), ids=[m for m, _ in _code_modules()])
def test_every_module_declares_all_and_defines_each_name(name, path):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n) and n not in getattr(module, "_LAZY", {})]
    assert not missing, f"{name}.__all__ lists undefined names {missing}"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def test_every_folder_says_what_it_holds():
    for name, path in _modules():
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"


def test_prefect_is_imported_only_by_the_flows_and_the_networks_do_no_io():
    for name, path in _modules():
        roots = {i.split(".")[0] for i in _imports(path)}
        if not name.startswith("s2pipe.flows"):
            assert "prefect" not in roots, f"{name} imports Prefect; orchestration belongs in s2pipe.flows"
        if name.startswith("s2pipe.ml.nets"):
            io = roots & {"rasterio", "zarr", "xarray", "dask", "distributed", "fsspec", "pystac", "prefect"}
            assert not io, f"{name} (torch modules only) imports {sorted(io)}"
            assert {i for i in _imports(path) if i.startswith("s2pipe")} <= {"s2pipe.errors"}, name
    # the library never reaches into the orchestration or the CLI (the CLI reaches the flows)
    for name, path in _modules():
        if not name.startswith(("s2pipe.flows", "s2pipe.cli")):
            up = {i for i in _imports(path) if i.startswith(("s2pipe.flows", "s2pipe.cli"))}
            assert not up, f"{name} imports {sorted(up)}"


def test_test_modules_import_shared_code_only_from_conftest_and_helpers():
    """So that `pytest` (tests/ on sys.path) and `python -m pytest` (the checkout on sys.path) collect the same."""
    tests = Path(__file__).resolve().parent
    for path in sorted(tests.glob("*.py")):
        for imported in _imports(path):
            root = imported.split(".")[0]
            assert root != "tests", f"{path.name} imports {imported}: import from helpers or use conftest fixtures"
            assert not root.startswith("test_"), f"{path.name} imports the test module {imported}"


def test_the_package_map_in_docs_lists_every_import_between_folders():
    """docs/architecture.md's package map: each supporting folder imports only what its row lists."""
    import re

    doc = (REPO / "docs" / "architecture.md").read_text()
    allowed: dict[str, set[str]] = {}
    for line in doc.splitlines():
        m = re.match(r"\| `s2pipe/(\w+)/` \| .* \| (.*) \|$", line)
        if m and m.group(1) != "flows":
            allowed[m.group(1)] = {t.strip("`/") for t in re.findall(r"`[\w/]+`", m.group(2))}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {"flows"}
    assert set(allowed) == folders, f"package map rows {sorted(allowed)} vs folders {sorted(folders)}"

    def group(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    for name, path in _modules():
        here = group(name)
        if here not in allowed:
            continue
        used = {group(i) for i in _imports(path) if i.startswith("s2pipe.")} - {here, "__version__"}
        assert used <= allowed[here], f"{name} imports {sorted(used - allowed[here])}, not in the package map"
