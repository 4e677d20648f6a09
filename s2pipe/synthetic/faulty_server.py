"""A faulty object store for tests and benchmarks: a range-capable HTTP server on 127.0.0.1 that serves local
files (the demo COGs) and spoils a seeded fraction of the requests, as real object stores sometimes do.

``tests/test_faulty_reads.py`` reads cubes through it; ``benchmarks/bench_faults.py`` measures the cost."""
from __future__ import annotations

from pathlib import Path

__all__ = ["FaultyCogServer", "http_items"]


class FaultyCogServer:
    """A range-capable HTTP server on 127.0.0.1 that serves the files under ``root`` and spoils a seeded
    fraction ``rate`` of the byte-range GET requests, as real object stores sometimes do.

    Faults (chosen at random among ``kinds``): ``"503"`` (Service Unavailable), ``"429"`` (Too Many Requests,
    ``Retry-After: 1``), ``"stall"`` (no answer for ``stall_s`` seconds, then the connection closes), ``"close"``
    (the headers and half the body, then the connection closes) and ``"truncate"`` (a short body under the full
    ``Content-Length``). Files whose path ends with one of ``broken`` answer 503 to every request (set it
    while the server runs to break a file that read well so far). ``counts`` holds the
    requests served and the faults injected by kind. Use as a context manager; ``url(path)`` is the URL of a
    file under ``root``.

    Token mode (``token_ttl`` seconds): the server is also a SAS token service like Planetary Computer's
    (``GET /token/{account}/{container}`` -> ``{"msft:expiry": ..., "token": "se=...&sig=..."}``, see
    ``s2pipe.stac.signing``), and answers 403 to every file request without a valid token or with an expired one
    (``counts["403"]``; ``counts["tokens"]``: tokens issued). ``token_url`` is the service's URL.
    """

    KINDS = ("503", "429", "stall", "close", "truncate")

    def __init__(self, root, *, rate: float = 0.0, seed: int = 0, kinds=KINDS, stall_s: float = 4.0,
                 broken: tuple[str, ...] = (), token_ttl: float | None = None):
        import collections
        import random
        import threading

        self.root, self.rate, self.kinds, self.stall_s, self.broken = Path(root), rate, tuple(kinds), stall_s, broken
        self.token_ttl = token_ttl
        self._secret = random.Random(seed).randbytes(16)
        self.counts = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = None

    def url(self, path) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{Path(path).relative_to(self.root).as_posix()}"

    def revoke(self) -> None:
        """Revoke every token issued so far (a new signing key): files answer 403 until signed again."""
        import os

        with self._lock:
            self._secret = os.urandom(16)

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def _signature(self, expiry: str) -> str:
        import hashlib
        import hmac

        return hmac.new(self._secret, expiry.encode(), hashlib.sha256).hexdigest()

    def _issue_token(self) -> dict:
        import datetime as dt
        import time

        expiry = f"{time.time() + self.token_ttl:.3f}"
        with self._lock:
            self.counts["tokens"] += 1
        iso = dt.datetime.fromtimestamp(float(expiry), dt.timezone.utc).isoformat()
        return {"msft:expiry": iso, "token": f"se={expiry}&sig={self._signature(expiry)}"}

    def _authorized(self, query: str) -> bool:
        import hmac
        import time
        from urllib.parse import parse_qs

        if self.token_ttl is None:
            return True
        q = parse_qs(query)
        expiry, sig = q.get("se", [""])[0], q.get("sig", [""])[0]
        ok = bool(expiry) and hmac.compare_digest(sig, self._signature(expiry)) and float(expiry) > time.time()
        if not ok:
            with self._lock:
                self.counts["403"] += 1
        return ok

    def _fault(self, ranged: bool, name: str) -> str | None:
        """The fault for a request of file ``name`` (its path under ``root``), or None."""
        with self._lock:
            self.counts["requests"] += 1
            if self.broken and name.endswith(self.broken):
                self.counts["broken"] += 1
                return "503"
            if ranged and self._rng.random() < self.rate:
                kind = self._rng.choice(self.kinds)
                self.counts[kind] += 1
                return kind
        return None

    def __enter__(self) -> "FaultyCogServer":
        import http.server
        import threading
        import time

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _file(self):
                route, _, query = self.path.partition("?")
                path = (server.root / route.lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return None
                if not server._authorized(query):
                    self.send_error(403)
                    return None
                return path

            def _token(self) -> bool:
                import json

                if server.token_ttl is None or not self.path.startswith("/token/"):
                    return False
                body = json.dumps(server._issue_token()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def do_HEAD(self):
                path = self._file()
                if path is None:
                    return
                if server._fault(False, path.relative_to(server.root.resolve()).as_posix()):
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                if self._token():
                    return
                path = self._file()
                if path is None:
                    return
                data = path.read_bytes()
                rng = self.headers.get("Range")
                start, end = 0, len(data) - 1
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[len("bytes="):].partition("-")
                    start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                fault = server._fault(rng is not None, path.relative_to(server.root.resolve()).as_posix())
                body = data[start:end + 1]
                if fault in ("503", "429"):
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "stall":
                    time.sleep(server.stall_s)
                    self.close_connection = True
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if fault in ("close", "truncate"):
                    self.wfile.write(body[: len(body) // 2] if fault == "close" else body[: max(0, len(body) - 7)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def http_items(items: list[dict], server: FaultyCogServer) -> list[dict]:
    """Copies of STAC item dicts whose local asset hrefs point at ``server`` instead."""
    import copy

    out = []
    for it in items:
        it = copy.deepcopy(it)
        for asset in it["assets"].values():
            href = asset["href"]
            if not href.startswith(("http://", "https://")):
                asset["href"] = server.url(Path(href[len("file://"):] if href.startswith("file://") else href))
        out.append(it)
    return out
