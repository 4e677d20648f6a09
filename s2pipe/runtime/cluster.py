"""Where a run's array work happens: a Dask ``Client`` on a LocalCluster, an existing scheduler, or a cluster spec.

A cluster spec is a small YAML file (``DaskConfig.spec``; ready-made ones in ``deploy/dask/``)::

    kind: slurm                    # local | slurm | kubernetes
    options: {cores: 8, memory: 32GiB, walltime: "04:00:00"}   # keyword arguments of the cluster class
    scale: {jobs: 4}               # fixed size ({jobs: N} SLURM only, or {workers: N}) ...
    adapt: {minimum: 0, maximum: 32}   # ... or adaptive (workers; SLURM also minimum_jobs/maximum_jobs)
    wait_for_workers: 1            # block until this many workers joined (0: do not wait)
    wait_timeout: 900              # seconds

``load_cluster_spec`` validates such a file completely without starting anything; ``create_cluster`` builds the
cluster object (a SLURM cluster submits no job until it is scaled); ``start_cluster`` also scales it and
waits for workers. ``python -m s2pipe.runtime.cluster SPEC`` starts one and prints its address for ``--dask-address``.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from s2pipe.config import DaskConfig
from s2pipe.errors import InputError, TransientError

__all__ = [
    "KINDS", "LocalOptions", "SlurmOptions", "KubernetesOptions", "ScaleSpec", "AdaptSpec", "ClusterSpec",
    "load_cluster_spec", "load_daskcluster_manifest", "daskcluster_crd_schema", "daskcluster_schema_errors",
    "WORKER_MALLOC", "worker_environment", "create_cluster", "start_cluster", "dask_client", "main",
    "PERSIST_FRACTION", "cluster_memory", "persist_budget",
]

KINDS = ("local", "slurm", "kubernetes")
"""The cluster kinds a spec may name."""

_EXTRAS = {"slurm": ("dask_jobqueue", "slurm"), "kubernetes": ("dask_kubernetes", "kubernetes")}
_CRD = "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_WALLTIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})$")


def _bytes(v: str | int | None, what: str) -> str | int | None:
    from dask.utils import parse_bytes

    if v is None or v == "auto":
        return v
    try:
        parse_bytes(v)
    except (ValueError, TypeError):
        raise ValueError(f"{what} {v!r} is not a size; write e.g. '4GiB' or a number of bytes") from None
    return v


class LocalOptions(BaseModel):
    """``kind: local``: keyword arguments of ``distributed.LocalCluster``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_workers: int = Field(1, ge=0, description="Workers started with the cluster.")
    threads_per_worker: int | None = Field(None, ge=1, description="Threads per worker (None: cores / workers).")
    processes: bool = Field(True, description="Workers in subprocesses (True) or as threads of this process (False).")
    memory_limit: str | int = Field("auto", description="Memory limit per worker ('4GiB', bytes, or 'auto').")
    dashboard_address: str | None = Field(None, description="Dashboard address such as ':8787' (None: no dashboard).")
    host: str | None = Field(None, description="Interface the scheduler listens on (None: localhost).")
    scheduler_port: int = Field(0, ge=0, le=65535, description="Scheduler port (0: a free port).")
    local_directory: str | None = Field(None, description="Scratch directory for spilled data.")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v):
        return _bytes(v, "memory_limit")


class SlurmOptions(BaseModel):
    """``kind: slurm``: keyword arguments of ``dask_jobqueue.SLURMCluster`` (the ``jobqueue.slurm`` keys; ``-`` or ``_``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=lambda s: s.replace("_", "-"),
                              populate_by_name=True)

    cores: int = Field(ge=1, description="CPU cores per job (shared by the job's worker processes).")
    memory: str = Field(description="Memory per job, e.g. '32GiB' (split between the job's worker processes).")
    processes: int | None = Field(None, ge=1, description="Worker processes per job (None: about sqrt(cores)).")
    queue: str | None = Field(None, description="SLURM partition (sbatch -p).")
    account: str | None = Field(None, description="SLURM account charged (sbatch -A).")
    walltime: str = Field("00:30:00", description="Job time limit in a SLURM time format, e.g. '04:00:00' or '1-00:00:00'.")
    job_cpu: int | None = Field(None, ge=1, description="--cpus-per-task if it must differ from cores.")
    job_mem: str | None = Field(None, description="--mem if it must differ from memory.")
    job_name: str | None = Field(None, description="SLURM job name (default: dask-worker).")
    python: str | None = Field(None, description="Python executable on the compute nodes (default: this one).")
    interface: str | None = Field(None, description="Network interface of workers and scheduler, e.g. 'ib0'.")
    death_timeout: float | None = Field(None, gt=0, description="Seconds a worker waits for an unreachable scheduler.")
    local_directory: str | None = Field(None, description="Fast node-local scratch, e.g. '$TMPDIR'.")
    shared_temp_directory: str | None = Field(None, description="Shared directory for temporary security files.")
    log_directory: str | None = Field(None, description="Directory of the jobs' stdout/stderr files.")
    worker_command: str | None = Field(None, description="Module that starts a worker (default distributed.cli.dask_worker).")
    worker_extra_args: tuple[str, ...] = Field((), description="Extra arguments of the worker command, e.g. ['--lifetime', '3h'].")
    job_script_prologue: tuple[str, ...] = Field((), description="Shell lines run before the worker, e.g. module loads.")
    job_extra_directives: tuple[str, ...] = Field((), description="Extra '#SBATCH' directives, e.g. ['--constraint=cpu'].")
    job_directives_skip: tuple[str, ...] = Field((), description="Default directives to drop, e.g. ['--mem'].")
    shebang: str | None = Field(None, description="First line of the job script.")
    scheduler_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the scheduler (e.g. dashboard_address).")
    protocol: str | None = Field(None, description="Comm protocol, e.g. 'tcp://'.")
    nanny: bool = Field(True, description="Run workers under a nanny (restarts a worker that died).")

    @field_validator("memory", "job_mem")
    @classmethod
    def _memory(cls, v, info):
        return _bytes(v, info.field_name)

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        if not _WALLTIME.match(v):
            raise ValueError(f"walltime {v!r} is not a SLURM time; write e.g. '04:00:00' or '1-00:00:00'")
        return v


class KubernetesOptions(BaseModel):
    """``kind: kubernetes``: a DaskCluster manifest and keyword arguments of ``dask_kubernetes.operator.KubeCluster``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Path = Field(description="DaskCluster manifest YAML (relative paths: from the spec file's folder).")
    namespace: str | None = Field(None, description="Namespace (None: the current kubectl context's).")
    create_mode: Literal["CREATE_OR_CONNECT", "CREATE_ONLY", "CONNECT_ONLY"] = Field(
        "CREATE_OR_CONNECT", description="Create the DaskCluster, connect to an existing one of that name, or either.")
    shutdown_on_close: bool = Field(True, description="Delete the DaskCluster when the run ends.")
    resource_timeout: int | None = Field(None, ge=1, description="Seconds to wait for the operator to act on the resource.")
    port_forward_cluster_ip: bool | None = Field(None, description="Port-forward the scheduler when running outside Kubernetes.")
    scheduler_forward_port: int | None = Field(None, ge=1, le=65535, description="Local port of that port-forward.")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_NAME.match(v):
            raise ValueError(f"namespace {v!r} is not a Kubernetes name; use lower-case letters, digits and '-'")
        return v


_OPTIONS = {"local": LocalOptions, "slurm": SlurmOptions, "kubernetes": KubernetesOptions}


class ScaleSpec(BaseModel):
    """Fixed cluster size: exactly one of ``jobs`` (SLURM batch jobs) or ``workers``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    jobs: int | None = Field(None, ge=1, description="SLURM only: batch jobs submitted (each runs `processes` workers).")
    workers: int | None = Field(None, ge=0, description="Dask workers.")

    @model_validator(mode="after")
    def _one(self) -> "ScaleSpec":
        if (self.jobs is None) == (self.workers is None):
            raise ValueError("give exactly one of scale.jobs or scale.workers, e.g. scale: {workers: 4}")
        return self


class AdaptSpec(BaseModel):
    """Adaptive size between bounds, in workers (``minimum``/``maximum``) or SLURM jobs (``*_jobs``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    minimum: int | None = Field(None, ge=0, description="Fewest workers kept.")
    maximum: int | None = Field(None, ge=1, description="Most workers started.")
    minimum_jobs: int | None = Field(None, ge=0, description="SLURM only: fewest jobs kept.")
    maximum_jobs: int | None = Field(None, ge=1, description="SLURM only: most jobs submitted.")

    @model_validator(mode="after")
    def _bounds(self) -> "AdaptSpec":
        workers = self.minimum is not None or self.maximum is not None
        jobs = self.minimum_jobs is not None or self.maximum_jobs is not None
        if workers == jobs:
            raise ValueError("give adapt bounds in workers (minimum, maximum) or in jobs (minimum_jobs, maximum_jobs), not both or neither")
        lo, hi = (self.minimum, self.maximum) if workers else (self.minimum_jobs, self.maximum_jobs)
        if hi is None:
            raise ValueError("adapt needs a maximum (maximum or maximum_jobs) so a run cannot grow without bound")
        if lo is not None and lo > hi:
            raise ValueError(f"adapt minimum {lo} is above maximum {hi}; swap them")
        return self


class ClusterSpec(BaseModel):
    """A validated cluster spec file (see the module docstring for the format)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    kind: Literal["local", "slurm", "kubernetes"] = Field(description="Cluster engine.")
    options: LocalOptions | SlurmOptions | KubernetesOptions = Field(description="Keyword arguments of the cluster class of `kind`.")
    scale: ScaleSpec | None = Field(None, description="Fixed size after start (exclusive with adapt).")
    adapt: AdaptSpec | None = Field(None, description="Adaptive size after start (exclusive with scale).")
    wait_for_workers: int = Field(0, ge=0, description="Workers to wait for before the run submits work (0: none).")
    wait_timeout: float = Field(600.0, gt=0, description="Seconds to wait for them before failing (TransientError).")
    source: Path | None = Field(None, description="The spec file it was read from (for messages).")
    manifest: dict[str, Any] | None = Field(None, description="kind kubernetes: the loaded DaskCluster manifest.")

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterSpec":
        if self.scale is not None and self.adapt is not None:
            raise ValueError("give scale or adapt, not both")
        if self.kind != "slurm":
            if self.scale is not None and self.scale.jobs is not None:
                raise ValueError(f"scale.jobs is for kind slurm only; for kind {self.kind} write scale: {{workers: N}}")
            if self.adapt is not None and (self.adapt.minimum_jobs is not None or self.adapt.maximum_jobs is not None):
                raise ValueError(f"adapt.minimum_jobs/maximum_jobs are for kind slurm only; for kind {self.kind} use minimum/maximum")
        return self


def _hint(err: dict, allowed: list[str]) -> str:
    """A fix for one pydantic error: close key names for unknown keys, the expected form otherwise."""
    key = str(err["loc"][-1]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key.replace("-", "_"), [a.replace("-", "_") for a in allowed], n=1)
        return (f"did you mean {close[0]!r}? " if close else "") + f"allowed keys: {', '.join(allowed)}"
    if err["type"] == "missing":
        return "add it to the spec"
    kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string (quote it)",
             "list": "a list, e.g. [a, b]", "tuple": "a list, e.g. [a, b]", "dict": "a mapping, e.g. {key: value}",
             "greater": "a larger number", "less": "a smaller number"}
    want = next((v for k, v in kinds.items() if err["type"].startswith(k)), None)
    return f"write {want}" if want else "fix the value"


def _raise(exc: ValidationError, *, path: Path, prefix: str, allowed: list[str]) -> None:
    lines = [f"cluster spec {path} is invalid:"]
    for err in exc.errors():
        where = ".".join([prefix, *(str(p) for p in err["loc"])]).strip(".") or "spec"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        value = f" = {err['input']!r}" if err["type"] != "missing" else ""
        hint = "" if err["type"] == "value_error" else f"; {_hint(err, allowed)}"  # value errors carry their fix
        lines.append(f"  {where}{value}: {msg}{hint}")
    raise InputError("\n".join(lines)) from None


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Read and fully validate a cluster spec YAML without starting anything.

    Unknown kinds or keys, wrong types and bad sizes raise ``InputError`` naming the file, the key, the value
    and the fix. For ``kind: kubernetes`` the DaskCluster manifest is read and checked too, against the CRD
    schema of dask-kubernetes when that package is installed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cluster spec {path} does not exist; pass the path of a spec YAML (e.g. deploy/dask/slurm.yaml) as dask.spec")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"cluster spec {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"cluster spec {path} must hold a mapping with 'kind' and 'options', got {type(data).__name__}")
    top = [k for k in ClusterSpec.model_fields if k not in ("source", "manifest")]
    unknown = [k for k in data if k not in top]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), top, n=1)
        raise InputError(f"cluster spec {path}: unknown key {unknown[0]!r} (= {data[unknown[0]]!r}); "
                         + (f"did you mean {close[0]!r}? " if close else "") + f"allowed keys: {', '.join(top)}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InputError(f"cluster spec {path}: kind = {kind!r} is not a cluster kind; write kind: one of {', '.join(KINDS)}")
    model = _OPTIONS[kind]
    raw = data.get("options") or {}
    if not isinstance(raw, dict):
        raise InputError(f"cluster spec {path}: options = {raw!r} must be a mapping of keyword arguments of the {kind} cluster")
    allowed = [(f.alias or n) for n, f in model.model_fields.items()]
    try:
        options = model(**raw)
    except ValidationError as exc:
        _raise(exc, path=path, prefix="options", allowed=allowed)
    manifest = None
    if kind == "kubernetes":
        mpath = options.manifest if options.manifest.is_absolute() else path.parent / options.manifest
        manifest = load_daskcluster_manifest(mpath, spec=path)
        options = options.model_copy(update={"manifest": mpath})
    fields = {k: v for k, v in data.items() if k not in ("kind", "options")}
    try:
        return ClusterSpec(kind=kind, options=options, source=path, manifest=manifest, **fields)
    except ValidationError as exc:
        _raise(exc, path=path, prefix="", allowed=top)


def load_daskcluster_manifest(path: str | Path, *, spec: str | Path | None = None) -> dict[str, Any]:
    """Read a DaskCluster manifest and check it (structure always; the CRD schema when dask-kubernetes is installed)."""
    path = Path(path)
    where = f"DaskCluster manifest {path}" + (f" (from cluster spec {spec})" if spec else "")
    if not path.is_file():
        raise InputError(f"{where} does not exist; set options.manifest to a DaskCluster YAML such as deploy/dask/kubernetes.yaml")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise InputError(f"{where} is not valid YAML: {exc}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InputError(f"{where} must hold exactly one DaskCluster document, got {len(docs)} documents")
    m = docs[0]
    if m.get("apiVersion") != "kubernetes.dask.org/v1" or m.get("kind") != "DaskCluster":
        raise InputError(f"{where}: apiVersion/kind = {m.get('apiVersion')!r}/{m.get('kind')!r}; "
                         "write apiVersion: kubernetes.dask.org/v1 and kind: DaskCluster")
    name = (m.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not _DNS_NAME.match(name) or len(name) > 63:
        raise InputError(f"{where}: metadata.name = {name!r} is not a Kubernetes name; "
                         "use at most 63 lower-case letters, digits and '-'")
    if importlib.util.find_spec("dask_kubernetes") is not None:
        problems = daskcluster_schema_errors(m)
        if problems:
            raise InputError(f"{where} does not match the DaskCluster CRD schema:\n  " + "\n  ".join(problems))
    return m


@functools.lru_cache(maxsize=1)
def daskcluster_crd_schema() -> dict[str, Any]:
    """The ``spec`` schema of the DaskCluster CRD shipped with dask-kubernetes, strict about unknown fields.

    Objects with declared properties reject undeclared ones (as ``kubectl apply --validate=strict`` does).
    """
    found = importlib.util.find_spec("dask_kubernetes")
    if found is None or not found.submodule_search_locations:
        raise InputError("checking a DaskCluster manifest needs dask-kubernetes; pip install 's2pipe[kubernetes]'")
    crd_path = Path(next(iter(found.submodule_search_locations))) / _CRD
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"]["properties"]["spec"])

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    return schema


def daskcluster_schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Every violation of the DaskCluster CRD schema in ``manifest['spec']``, as 'spec.path: message' lines."""
    import jsonschema

    validator = jsonschema.Draft4Validator(daskcluster_crd_schema())
    errors = sorted(validator.iter_errors(manifest.get("spec")), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(['spec', *map(str, e.absolute_path)])}: {e.message}" for e in errors]


def _require(kind: str):
    module, extra = _EXTRAS[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"cluster kind {kind!r} needs the {module} package ({exc}); "
                         f"install it with pip install 's2pipe[{extra}]'") from None



WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": 256 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}
"""glibc settings of the worker processes of the local clusters s2pipe starts (Dask's default: trim at 64 KiB).

Dask's setting also turns off glibc's adaptive mmap threshold, so every buffer over 128 KiB is a fresh ``mmap``,
faulted in page by page and unmapped when freed. Model inference allocates thousands of ~10 MB tensors per
chunk: with buffers up to 32 MiB taken from (and returned to) the heap, and up to 256 MiB of free heap kept
mapped, the mapper's chunk tasks ran 2.2x and the forecaster's 1.7x faster on this 2-core machine
(``benchmarks/bench_inference.py``, against ``--dask-malloc``). The data path did not change measurably
(``bench_e2e.py``). For a cluster you start yourself, set the same
variables in the workers' environment (``distributed.nanny.pre-spawn-environ``)."""


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """Dask config under which a ``LocalCluster`` spawns its worker processes with ``WORKER_MALLOC``."""
    import dask
    import distributed  # noqa: F401  (registers distributed's config defaults)

    key = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({key: {**dask.config.get(key, {}), **WORKER_MALLOC}}):
        yield


def create_cluster(spec: ClusterSpec) -> Any:
    """Build the cluster object of ``spec`` without scaling it.

    local: starts the LocalCluster and its ``n_workers``. slurm: starts the scheduler in this process and
    submits no job (``job_script()`` shows what would be submitted). kubernetes: creates (or connects to)
    the DaskCluster resource, so it needs a reachable Kubernetes API.
    """
    opts = spec.options
    if spec.kind == "local":
        from distributed import LocalCluster

        with worker_environment():
            return LocalCluster(**opts.model_dump())
    if spec.kind == "slurm":
        jobqueue = _require("slurm")
        kwargs = opts.model_dump(exclude_none=True)
        for key in ("worker_extra_args", "job_script_prologue", "job_extra_directives", "job_directives_skip"):
            kwargs[key] = list(kwargs[key])
        return jobqueue.SLURMCluster(**kwargs)
    _require("kubernetes")
    from dask_kubernetes.operator import KubeCluster
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    try:
        return KubeCluster(
            custom_cluster_spec=copy.deepcopy(spec.manifest), namespace=opts.namespace,
            create_mode=CreateMode(opts.create_mode), shutdown_on_close=opts.shutdown_on_close,
            resource_timeout=opts.resource_timeout, port_forward_cluster_ip=opts.port_forward_cluster_ip,
            scheduler_forward_port=opts.scheduler_forward_port, quiet=True,
        )
    except (OSError, TimeoutError) as exc:
        raise TransientError(f"cannot start the Kubernetes cluster of {spec.source}: {exc}; "
                             "check kubectl access and that the dask-kubernetes operator is installed") from exc
    except ValueError as exc:
        raise InputError(f"cannot start the Kubernetes cluster of {spec.source}: {exc}; "
                         "change options.create_mode or the manifest's metadata.name") from exc


def start_cluster(spec: ClusterSpec) -> Any:
    """Create the cluster of ``spec``, apply ``scale``/``adapt``, and wait for ``wait_for_workers`` workers."""
    cluster = create_cluster(spec)
    try:
        if spec.scale is not None:
            if spec.scale.jobs is not None:
                cluster.scale(jobs=spec.scale.jobs)
            else:
                cluster.scale(spec.scale.workers)
        elif spec.adapt is not None:
            cluster.adapt(**spec.adapt.model_dump(exclude_none=True))
        if spec.wait_for_workers:
            try:
                cluster.wait_for_workers(spec.wait_for_workers, timeout=spec.wait_timeout)
            except TimeoutError as exc:
                raise TransientError(
                    f"cluster of {spec.source}: fewer than {spec.wait_for_workers} workers joined within "
                    f"{spec.wait_timeout:g} s; check the queue (squeue) or pods, raise wait_timeout or lower wait_for_workers"
                ) from exc
    except BaseException:
        cluster.close()
        raise
    return cluster


@contextlib.contextmanager
def dask_client(settings: DaskConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for the run: connect to ``settings.address``, start the cluster of
    ``settings.spec`` (closed afterwards), or start a LocalCluster from the other settings."""
    from distributed import Client, LocalCluster

    spec_path = settings.spec
    if settings.address and spec_path:
        raise InputError(
            f"dask.address {settings.address!r} and dask.spec {spec_path!r} are both set; "
            "keep address to use a running cluster, or spec to start one for the run"
        )
    if settings.address:
        try:
            client = Client(settings.address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise TransientError(
                f"cannot reach the Dask scheduler at {settings.address!r}: {exc}; "
                "check the address (--dask-address) or leave it out to start a local cluster"
            ) from exc
        with client:
            yield client
        return
    if spec_path:
        spec = load_cluster_spec(spec_path)
        with start_cluster(spec) as cluster, Client(cluster) as client:
            yield client
        return
    with worker_environment():
        cluster = LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            processes=settings.processes,
            dashboard_address=None,
        )
    with cluster, Client(cluster) as client:
        yield client


def main(argv: list[str] | None = None) -> None:
    """``python -m s2pipe.runtime.cluster SPEC``: start the spec's cluster and keep it up for ``--dask-address`` runs."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("spec", help="cluster spec YAML, e.g. deploy/dask/slurm.yaml")
    parser.add_argument("--check", action="store_true", help="validate only (SLURM: print the job script); start nothing")
    args = parser.parse_args(argv)
    spec = load_cluster_spec(args.spec)
    if args.check:
        print(f"{args.spec}: valid {spec.kind} cluster spec")
        if spec.kind == "slurm":
            with create_cluster(spec) as cluster:
                print(cluster.job_script())
        return
    with start_cluster(spec) as cluster:
        print(f"scheduler: {cluster.scheduler_address}  (pass it as --dask-address; Ctrl-C stops the cluster)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()


PERSIST_FRACTION = 0.25
"""A raw cube up to this fraction of the cluster's worker memory is persisted; a larger one streams region by
region through a staging store (``s2pipe.store.staging``). Either way each COG pixel is read once."""


def cluster_memory() -> float:
    """Summed memory limit of the current Dask client's workers in bytes (0 without a client)."""
    try:
        from distributed import get_client

        workers = get_client().scheduler_info().get("workers", {})
    except ValueError:
        return 0.0
    return float(sum(w.get("memory_limit") or 0 for w in workers.values()))


def persist_budget() -> float:
    """Bytes of raw cube that a run holds in cluster memory: ``PERSIST_FRACTION`` of ``cluster_memory()``."""
    return PERSIST_FRACTION * cluster_memory()
