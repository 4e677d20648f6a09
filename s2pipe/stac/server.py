"""Run a real STAC API (``rustac serve``) on 127.0.0.1 for local item files.

pystac-client cannot ``search()`` a static catalog; ``rustac serve`` loads collections and item collections
into an in-memory backend and answers ``/search`` like Earth Search does. s2pipe starts and stops it itself.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from s2pipe.errors import S2PipeError

__all__ = ["rustac_executable", "free_port", "LocalStacServer"]


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
