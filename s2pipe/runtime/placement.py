"""Where model inference runs on a Dask cluster: on GPU workers when the cluster has some, else anywhere (CPU).

```python
with inference_placement(client) as placement:      # client: a distributed.Client, or None (the current one)
    proba = mapper.predict(cube.chunk(...))         # inference tasks ask for resources={"GPU": 1} ...
    write_probabilities(proba, "p.zarr")            # ... when placement.gpu; compute inside the block
```

A worker advertises a GPU with ``dask worker --resources "GPU=1"`` (or ``Worker(..., resources={"GPU": 1})``).
``gpu_workers(client)`` lists those; ``inference_placement`` decides once for the block, logs the choice and,
when GPU workers exist, makes the graph-building code of the model-inference tasks (``Mapper.predict`` and
``forecast_cube`` on Dask input, through ``inference_tasks()``) annotate only those tasks with
``dask.annotate(resources={"GPU": 1})``: the scheduler then runs them on GPU workers only, while reading,
halo exchange, rechunking and writing run on any worker. Without GPU workers (or without a client) nothing
changes: no annotation, the Dask config untouched.

**Annotations and graph optimisation.** Dask's low-level task fusion (``optimization.fuse.active``, on by
default for arrays) merges each inference task with its neighbours into new tasks *without* the layer's
annotations, so the scheduler would place them anywhere. ``inference_placement`` therefore turns low-level
fusion off for the duration of the block when it places on GPUs; the graph must be computed inside the block.
(High-level ``Blockwise`` fusion keeps ``resources`` annotations: a fused layer asks for the maximum.)

**Device inside a task.** With GPU placement and ``device=None``, each inference task picks its device on the
worker that runs it (``resolve_device(None)``: CUDA when ``torch.cuda.is_available()`` there, else CPU) and
uses a per-process copy of the model on that device; the model object itself is never moved by a task.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["GPU", "Placement", "gpu_workers", "has_gpu_workers", "inference_placement", "inference_tasks",
           "current_placement", "on_device", "available_cores", "task_threads", "torch_threads"]

GPU = "GPU"
"""Name of the Dask worker resource that marks a GPU worker."""

_log = logging.getLogger("s2pipe.runtime.placement")
_current: contextvars.ContextVar["Placement | None"] = contextvars.ContextVar("s2pipe_placement", default=None)


@dataclass(frozen=True)
class Placement:
    """The placement chosen for model-inference tasks.

    Attributes
    ----------
    gpu
        True: inference tasks ask for one ``GPU`` resource unit (they run on GPU workers only).
    gpu_workers
        addresses of the workers advertising a ``GPU`` resource when the choice was made.
    n_workers
        workers of the cluster then (0 without a client).
    """

    gpu: bool
    gpu_workers: tuple[str, ...] = ()
    n_workers: int = 0

    @property
    def annotations(self) -> dict[str, Any]:
        """Dask annotations of the inference tasks: ``{"resources": {"GPU": 1}}`` or ``{}``."""
        return {"resources": {GPU: 1}} if self.gpu else {}

    def describe(self) -> str:
        if self.gpu:
            return (f"model inference on GPU workers: {len(self.gpu_workers)} of {self.n_workers} workers advertise "
                    f"a {GPU} resource ({', '.join(self.gpu_workers)}); inference tasks ask for resources={{'{GPU}': 1}}")
        if self.n_workers:
            return f"model inference on CPU: none of the {self.n_workers} Dask workers advertises a {GPU} resource"
        return "model inference on CPU: no Dask cluster"


def _current_client():
    """The distributed Client of this process (the default one), or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _workers(client) -> dict[str, dict]:
    info = client.scheduler_info(n_workers=-1)
    return dict(info.get("workers", {}))


def gpu_workers(client=None) -> list[str]:
    """Addresses of the workers of ``client`` (None: the current default client, if any) that advertise a
    ``GPU`` resource (``resources={"GPU": n}`` with n > 0); [] without a client or GPU workers."""
    client = _current_client() if client is None else client
    if client is None:
        return []
    return _gpu_addresses(_workers(client))


def _gpu_addresses(workers: dict[str, dict]) -> list[str]:
    return sorted(addr for addr, w in workers.items() if float((w.get("resources") or {}).get(GPU, 0)) > 0)


def has_gpu_workers(client=None) -> bool:
    """Whether any worker of ``client`` (None: the current default client) advertises a ``GPU`` resource."""
    return bool(gpu_workers(client))


def current_placement() -> Placement | None:
    """The placement of the enclosing ``inference_placement`` block (None outside one)."""
    return _current.get()


@contextlib.contextmanager
def inference_placement(client=None, *, logger: logging.Logger | logging.LoggerAdapter | None = None
                        ) -> Iterator[Placement]:
    """Choose where the model-inference tasks built and computed inside the block run; yield the ``Placement``.

    ``client``: a ``distributed.Client``; None: the current default client (none: CPU placement, nothing
    changes). With GPU workers, inference tasks built in the block carry ``resources={"GPU": 1}`` and Dask's
    low-level fusion is off in the block (so the annotations reach the scheduler): build *and compute* the
    graph inside it. The choice is logged on ``logger`` (default: the ``s2pipe.runtime.placement`` logger).
    """
    client = _current_client() if client is None else client
    if client is None:
        placement = Placement(gpu=False)
    else:
        workers = _workers(client)
        gpus = tuple(_gpu_addresses(workers))
        placement = Placement(gpu=bool(gpus), gpu_workers=gpus, n_workers=len(workers))
    (logger or _log).info(placement.describe())
    token = _current.set(placement)
    try:
        if placement.gpu:
            import dask

            with dask.config.set({"optimization.fuse.active": False}):
                yield placement
        else:
            yield placement
    finally:
        _current.reset(token)


@contextlib.contextmanager
def inference_tasks() -> Iterator[Placement | None]:
    """Around the code that creates the model-inference layers of a Dask graph: annotates them with
    ``resources={"GPU": 1}`` inside a GPU ``inference_placement`` block; otherwise does nothing.
    Yields the placement (None outside a block)."""
    placement = _current.get()
    if placement is None or not placement.gpu:
        yield placement
        return
    import dask

    with dask.annotate(**placement.annotations):
        yield placement


_copies: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


def on_device(model, device, move: Callable[[Any, Any], Any] | None = None):
    """``model`` on torch ``device``: the model itself when its ``.device`` is that device, else a copy made
    once per process and device (``move(model, device)``; default: a deep copy whose ``to(device)`` is called)
    and kept while ``model`` lives. Tasks on a worker use it instead of moving a model shared between threads."""
    import torch

    device = torch.device(device)
    if torch.device(getattr(model, "device", "cpu")) == device:
        return model
    key = str(device)
    with _copies_lock:
        per_model = _copies.setdefault(model, {})
        if key not in per_model:
            per_model[key] = move(model, device) if move is not None else copy.deepcopy(model).to(device)
        return per_model[key]


# ---------------------------------------------------------------------------------------------- CPU threads
def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=8)
def _host_threads(address: str) -> int:
    """Dask threads of all the workers on the host of the worker at ``address`` (asked once per process)."""
    from urllib.parse import urlparse

    from distributed import get_client

    workers = get_client().scheduler_info(n_workers=-1)["workers"]

    def host(addr: str, info: dict) -> str:
        return info.get("host") or urlparse(addr).hostname or addr

    me = host(address, workers.get(address, {}))
    return sum(int(w.get("nthreads", 1)) for a, w in workers.items() if host(a, w) == me) or 1


def task_threads(threads: int | None = None) -> int | None:
    """CPU threads for the model work of one Dask task (torch, tree predictions): the one thread policy.

    ``threads`` when given. On a distributed worker: the host's cores divided by the Dask threads of *all*
    the workers on that host (from the scheduler, once per process), at least 1. Oversubscribed threads run
    many times slower: two worker processes that each took all the cores made the mapper's chunk tasks ~10x
    slower than the bare network (``benchmarks/bench_inference.py``). Elsewhere (no distributed worker):
    None, the library's own setting.
    """
    if threads is not None:
        return threads
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError, AttributeError):
        return None
    try:
        on_host = _host_threads(worker.address)
    except Exception:  # noqa: BLE001 - no scheduler answer: this worker's own threads
        on_host = worker.state.nthreads
    return max(1, available_cores() // max(on_host, 1))


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[None]:
    """Run the enclosed torch work on ``task_threads(threads)`` CPU threads (restored afterwards)."""
    import torch

    n = task_threads(threads)
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
