"""Prefect's temporary API server for a CLI run, started while the command is still importing.

Without ``PREFECT_API_URL`` a flow call starts Prefect's temporary ("ephemeral") server: it imports Prefect's
whole server stack in the calling process (~4 s beyond ``import prefect``), then launches the same uvicorn
app in a subprocess and waits for it (~6 s), all after the command's own imports (~5 s for the flow
modules). ``start_in_background`` launches that subprocess from a thread as soon as the command knows it
will run a flow, so the server starts while the flow modules import; ``api`` then points the flow at it.

Anything unexpected (a URL configured in a Prefect profile or file, a server that does not come up) leaves
Prefect to do what it does without this module. The thread imports nothing of Prefect's: concurrent imports
of one package from two threads can see it half-initialised.
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
_proc: subprocess.Popen | None = None


def start_in_background() -> None:
    """Launch the temporary API server (once per process) and wait for it in a thread, unless a Prefect API
    is set in the environment or in this thread's Prefect settings. Imports nothing of Prefect's itself: the
    caller's own imports of Prefect would race with them."""
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
    yields its API URL, or None where Prefect's own settings apply (an API set in a profile or settings file:
    the temporary server is then stopped unused)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if _thread is None or PREFECT_API_URL.value():
        _stop()
        yield None
        return
    _thread.join()
    if _url is None:
        yield None
        return
    with temporary_settings(updates={PREFECT_API_URL: _url}):
        yield _url


_WITH_PARENT = """\
import os, signal, sys, threading, time
parent = os.getppid()
def watch():  # the run was killed (even SIGKILL: no atexit ran): stop, rather than live on orphaned
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
import uvicorn.main
sys.argv[0] = "uvicorn"
uvicorn.main.main()
"""
"""uvicorn's command line, in a process that stops when its parent (the run) dies."""


def _start() -> None:
    global _url, _proc
    try:
        import importlib.util

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # the command of Prefect's SubprocessASGIServer (prefect 3.8); the server process reads the same
        # environment, profiles and settings files as this one
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        _proc = subprocess.Popen(
            [sys.executable, "-c", _WITH_PARENT, "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
        atexit.register(_stop)
        url = f"http://127.0.0.1:{port}/api"
        log.info(f"starting a temporary Prefect API server on {url} (set PREFECT_API_URL to use your own)")
        # s2pipe/flows/__init__ sets 180 s: the first start on a fresh machine runs the database migrations
        deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
        while time.monotonic() < deadline and _proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        _url = url
                        return
            except OSError:
                time.sleep(0.1)
        _stop()
    except Exception:  # noqa: BLE001 - Prefect's own start-up then runs, and reports what is wrong
        return


def _stop() -> None:
    """Stop the server this module started, if it runs (at exit, or when it is not needed)."""
    proc = _proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
