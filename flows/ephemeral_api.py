"""Prefect's temporary API server for a CLI run, started while the command is still importing.

Without ``PREFECT_API_URL`` a flow call starts Prefect's temporary ("ephemeral") server: it imports Prefect's
whole server stack in the calling process (~4 s beyond ``import prefect``), then launches the same uvicorn
app in a subprocess and waits for it (~6 s), all after the command's own imports (~5 s for the flow
modules). ``start_in_background`` launches that subprocess from a thread as soon as the command knows it
will run a flow, so the server starts while the flow modules import; ``api`` then points the flow at it.

Anything unexpected (a URL configured in a Prefect profile or file, a server that does not come up) leaves
Prefect to do what it does without this module.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["start_in_background", "api"]

log = logging.getLogger("s2pipe")
_thread: threading.Thread | None = None
_url: str | None = None


def start_in_background() -> None:
    """Start the temporary API server in a thread (once per process), unless a Prefect API is configured."""
    global _thread
    if "prefect.settings" in sys.modules:  # a URL set in this thread's Prefect context (e.g. a test harness)
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return
    if _thread is None and not os.environ.get("PREFECT_API_URL"):
        _thread = threading.Thread(target=_start, name="s2pipe-prefect-api", daemon=True)
        _thread.start()


@contextlib.contextmanager
def api() -> Iterator[str | None]:
    """Context in which flow calls report to the server of ``start_in_background`` (waits until it answers);
    yields its API URL, or None when Prefect's own settings apply."""
    if _thread is not None:
        _thread.join()
    if _url is None:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: _url}):
        yield _url


def _start() -> None:
    global _url
    try:
        import importlib.util

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # the command of Prefect's SubprocessASGIServer (prefect 3.8), launched before Prefect is imported here:
        # the server reads the same environment, profiles and settings files itself
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
        atexit.register(_stop, proc)
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        if PREFECT_API_URL.value():  # set in a profile or a settings file: Prefect uses that API
            _stop(proc)
            return
        url = f"http://127.0.0.1:{port}/api"
        log.info(f"starting a temporary Prefect API server on {url} (set PREFECT_API_URL to use your own)")
        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        _url = url
                        return
            except OSError:
                time.sleep(0.1)
        _stop(proc)
    except Exception:  # noqa: BLE001 - Prefect's own start-up then runs, and reports what is wrong
        return


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
