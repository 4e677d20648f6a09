"""Run a real STAC API (``rustac serve``) on 127.0.0.1 for local item files.

pystac-client cannot ``search()`` a static catalog; ``rustac serve`` loads collections and item collections
into an in-memory backend and answers ``/search`` like Earth Search does. s2pipe starts and stops it itself.

``serve_folder`` serves the STAC files s2pipe writes beside its outputs (``*.collection.json``,
``*.item.json``; ``s2pipe.products.stac_metadata``) found under a folder, with their relative hrefs made
absolute (``served_stac``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from s2pipe.errors import InputError, S2PipeError

__all__ = ["rustac_executable", "free_port", "LocalStacServer", "ServedStac", "find_stac_files", "served_stac",
           "serve_folder", "STAC_SUFFIXES"]

STAC_SUFFIXES = (".collection.json", ".item.json")
"""The names of the STAC files ``find_stac_files`` collects: those s2pipe writes beside each output."""
MAX_STAC_BYTES = 16 << 20
"""Largest STAC file ``served_stac`` reads (16 MiB; an s2pipe Item is a few kB, a cube's with many inputs ~1 MB)."""
_STRUCTURE_RELS = {"self", "root", "parent", "collection", "item", "items", "child"}
"""Link relations the API makes itself (``rustac serve`` adds its own; the files' relative ones would mislead)."""


def rustac_executable() -> str:
    """Path of the ``rustac`` program installed beside this Python (or on PATH)."""
    beside = Path(sys.executable).with_name("rustac")
    if beside.is_file():
        return str(beside)
    found = shutil.which("rustac")
    if not found:
        raise S2PipeError("the `rustac` program was not found; install it with `pip install rustac`")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStacServer:
    """A ``rustac serve`` process serving ``hrefs`` (collection and item-collection JSON files).

    Use as a context manager::

        with LocalStacServer([collection_json, items_json]) as server:
            client = pystac_client.Client.open(server.url)
    """

    def __init__(self, hrefs: list[str | os.PathLike], *, port: int | None = None, startup_timeout: float = 30.0):
        self.hrefs = [str(Path(h).resolve()) for h in hrefs]
        for h in self.hrefs:
            if not Path(h).is_file():
                raise S2PipeError(f"STAC file {h} does not exist; cannot serve it")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None

    def start(self) -> "LocalStacServer":
        cmd = [rustac_executable(), "serve", *self.hrefs, "--create-collections", "--addr", f"127.0.0.1:{self.port}"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                    raise S2PipeError(f"`rustac serve` exited with code {self._proc.returncode}: {err.strip()}")
                try:
                    with urllib.request.urlopen(self.url + "/collections", timeout=2) as resp:
                        if resp.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.05)
        except BaseException:  # an error, or Ctrl-C / SIGTERM while starting: no server left behind
            self.stop()
            raise
        self.stop()
        raise S2PipeError(f"`rustac serve` did not answer on {self.url} within {self.startup_timeout} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def __enter__(self) -> "LocalStacServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServedStac(NamedTuple):
    """What ``serve_folder`` serves."""

    url: str
    """The STAC API's root URL (``http://127.0.0.1:<port>``)."""
    collections: list[str]
    """The collection ids served, sorted (one only named by an item, without its file, is created by the API)."""
    items: list[str]
    """The items served, as ``<collection>/<id>``, sorted."""


def find_stac_files(folder: str | os.PathLike) -> list[Path]:
    """The STAC files s2pipe wrote under ``folder`` (``STAC_SUFFIXES``), sorted.

    Zarr stores (``*.zarr``), hidden folders and hidden files (the temporary ``.<name>.part-*`` of a write under
    way) are not searched.

    Raises
    ------
    InputError
        ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder} is not a folder; pass the folder of the outputs, e.g. out")
    found = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
        found += [Path(parent) / f for f in files if f.endswith(STAC_SUFFIXES) and not f.startswith(".")]
    return sorted(found)


def served_stac(files: list[str | os.PathLike], *, url: str) -> tuple[list[dict], list[dict]]:
    """The collections and items of the STAC ``files`` as a STAC API at ``url`` serves them.

    Each relative href (assets, ``derived_from`` and other links) is made an absolute path on this machine, as
    the demo's input items have them (an API URL has no folder a relative href could be relative to); a link
    to another of the items becomes that item's URL in the API (``{url}/collections/{c}/items/{id}``). The
    links the API makes itself (self, root, parent, collection, item, ...) are dropped from the files' objects.

    Parameters
    ----------
    files : list of str or os.PathLike
        ``*.collection.json`` and ``*.item.json`` files (``find_stac_files``).
    url : str
        The API's root URL.

    Returns
    -------
    (list of dict, list of dict)
        The collections and the items (JSON dicts), in the order of ``files``.

    Raises
    ------
    InputError
        A file is not a STAC Collection or Item (JSON), is larger than ``MAX_STAC_BYTES``, or two files hold the
        same collection id, or the same item id in one collection.
    """
    objects: list[tuple[Path, dict]] = []
    for f in files:
        path = Path(f).resolve()
        if path.stat().st_size > MAX_STAC_BYTES:
            raise InputError(f"{f} is larger than {MAX_STAC_BYTES >> 20} MiB; it is no STAC file s2pipe wrote: "
                             "move it out of the folder served")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{f} is not JSON ({exc}); move it out of the folder served or rewrite it") from None
        kind = "Collection" if path.name.endswith(".collection.json") else "Feature"
        if not isinstance(obj, dict) or obj.get("type") != kind or not isinstance(obj.get("id"), str):
            raise InputError(f"{f} is not a STAC {'Collection' if kind == 'Collection' else 'Item'} (type "
                             f"{obj.get('type') if isinstance(obj, dict) else type(obj).__name__!r}, id missing?); "
                             "move it out of the folder served")
        objects.append((path, obj))

    base = url.rstrip("/")
    api: dict[Path, str] = {}
    seen: dict[tuple, Path] = {}
    for path, obj in objects:
        key = ("collection", obj["id"]) if obj["type"] == "Collection" else ("item", obj.get("collection"), obj["id"])
        if key in seen:
            raise InputError(f"{seen[key]} and {path} both hold the {key[0]} {'/'.join(str(k) for k in key[1:])}; "
                             "serve a folder with only one of them, or rename one output")
        seen[key] = path
        if obj["type"] == "Feature" and obj.get("collection"):
            api[path] = (f"{base}/collections/{urllib.parse.quote(obj['collection'], safe='')}/items/"
                         f"{urllib.parse.quote(obj['id'], safe='')}")

    def absolute(href: Any, folder: Path) -> Any:
        if not isinstance(href, str) or urllib.parse.urlsplit(href).scheme or os.path.isabs(href):
            return href
        return str((folder / urllib.parse.unquote(href)).resolve())

    collections, items = [], []
    for path, obj in objects:
        obj = dict(obj)
        obj["assets"] = {k: {**a, "href": absolute(a.get("href"), path.parent)} if isinstance(a, dict) else a
                         for k, a in (obj.get("assets") or {}).items()}
        links = []
        for link in obj.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") in _STRUCTURE_RELS:
                continue
            href = absolute(link.get("href"), path.parent)
            links.append({**link, "href": api.get(Path(href), href) if isinstance(href, str) else href})
        obj["links"] = links
        (collections if obj["type"] == "Collection" else items).append(obj)
    return collections, items


@contextlib.contextmanager
def serve_folder(folder: str | os.PathLike, *, port: int | None = None,
                 startup_timeout: float = 30.0) -> Iterator[ServedStac]:
    """Serve the STAC files under ``folder`` (``find_stac_files``, as ``served_stac`` rewrites them) with a real
    STAC API on 127.0.0.1 while the block runs.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder of the outputs (searched recursively).
    port : int, optional
        The port (default: a free one).
    startup_timeout : float, default 30
        Seconds to wait for the API to answer.

    Yields
    ------
    ServedStac
        The URL and what is served.

    Raises
    ------
    InputError
        ``folder`` is no folder, holds no STAC file, or one ``served_stac`` refuses.
    S2PipeError
        ``rustac serve`` did not start.
    """
    files = find_stac_files(folder)
    if not files:
        raise InputError(f"no {' or '.join('*' + s for s in STAC_SUFFIXES)} file under {folder}; s2pipe writes them "
                         "beside each output (`s2pipe run`, `map predict`, `map change`, `forecast predict`): pass "
                         "the folder of those outputs")
    port = port or free_port()
    collections, items = served_stac(files, url=f"http://127.0.0.1:{port}")
    with tempfile.TemporaryDirectory(prefix="s2pipe-serve-") as tmp:
        hrefs = []
        for i, collection in enumerate(collections):
            hrefs.append(Path(tmp) / f"collection-{i}.json")
            hrefs[-1].write_text(json.dumps(collection))
        if items:
            hrefs.append(Path(tmp) / "items.json")
            hrefs[-1].write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        with LocalStacServer(hrefs, port=port, startup_timeout=startup_timeout) as server:
            ids = {c["id"] for c in collections} | {it["collection"] for it in items if it.get("collection")}
            yield ServedStac(server.url, sorted(ids),
                             sorted(f"{it.get('collection')}/{it['id']}" for it in items))
