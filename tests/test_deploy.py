"""Every deployment file under deploy/ loaded by the real tool that consumes it (no cluster is reachable here).

Prefect: entrypoints load, parameters pass ``load_config``, cron schedules parse, CLI commands parse with
Prefect's own CLI app. Dask: commands parse with distributed's click commands, the SLURM spec builds a real
``SLURMCluster`` (no job submitted), the DaskCluster manifest validates against the operator's CRD schema,
and a ``kind: local`` spec runs a computation through ``dask_client``.
"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from s2pipe.config import DaskConfig, load_config
from s2pipe.errors import InputError
from s2pipe.runtime.cluster import (
    ClusterSpec,
    create_cluster,
    dask_client,
    daskcluster_crd_schema,
    daskcluster_schema_errors,
    load_cluster_spec,
)
from s2pipe.runtime.cluster import (
    main as cluster_main,
)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "dask" / "docker-compose.yml"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}
SPECS = ["local.yaml", "slurm.yaml", "kubernetes-spec.yaml"]


def _prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _prefect_cli(argv: list[str]):
    """Parse ``prefect ...`` arguments with Prefect's own (cyclopts) app, without running the command."""
    from prefect.cli._app import _app

    assert argv[0] == "prefect", argv
    command, bound, _ = _app.parse_args(argv[1:], exit_on_error=False, print_error=False)
    return command, bound.arguments


def _dask_cli(argv: list[str]) -> tuple[str, dict]:
    """Parse ``dask scheduler|worker ...`` / ``dask-scheduler|dask-worker ...`` with distributed's click commands."""
    from distributed.cli import dask_scheduler, dask_worker

    if argv[0] == "dask":
        argv = [f"dask-{argv[1]}", *argv[2:]]
    commands = {"dask-scheduler": dask_scheduler.main, "dask-worker": dask_worker.main}
    assert argv[0] in commands, f"unknown Dask command {argv[0]!r}"
    ctx = commands[argv[0]].make_context(argv[0], list(argv[1:]))
    return argv[0], ctx.params


# --------------------------------------------------------------------------------------------- Prefect


def test_prefect_deployments_load_and_validate(monkeypatch):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # prefect.yaml's pull step sets the working directory to the checkout
    doc = _prefect_yaml()
    assert doc["prefect-version"] == __import__("prefect").__version__
    step = doc["pull"][0]["prefect.deployments.steps.set_working_directory"]
    env = re.fullmatch(r"\{\{ \$(\w+) \}\}", step["directory"]).group(1)
    for dockerfile in DOCKERFILES.values():
        assert f"{env}=/opt/s2pipe" in dockerfile.read_text(), f"{dockerfile} must set {env} for the pull step"

    deployments = doc["deployments"]
    assert len({d["name"] for d in deployments}) == len(deployments)
    flows = {}
    for dep in deployments:
        entry = dep["entrypoint"]
        if entry not in flows:
            flows[entry] = load_flow_from_entrypoint(entry)
        flow = flows[entry]
        assert set(dep["parameters"]) <= set(flow.parameters.properties), dep["name"]
        cfg = load_config(dep["parameters"]["config"])
        flow.validate_parameters(dep["parameters"])  # what a worker does before the run starts
        assert cfg.output.parts[0] == "out", f"{dep['name']}: outputs go to out/ (the volume shared with workers)"
        if cfg.dask.spec:
            load_cluster_spec(cfg.dask.spec)
        for sched in dep.get("schedules", []):
            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone"))
    # the cron deployment the issue asks for: region, catalog, output store and cluster address as parameters
    on_cluster = [d for d in deployments if d.get("schedules") and (d["parameters"]["config"].get("dask") or {}).get("address")]
    assert on_cluster
    with pytest.raises(ValueError):
        CronSchedule(cron="0 3 * * mon-xyz")  # the parser really checks


def test_prefect_pools_and_addresses_match_compose_and_docs():
    deployments = _prefect_yaml()["deployments"]
    services = _compose()["services"]
    docs = (REPO / "docs" / "deployment.md").read_text()
    polled = {}
    for name, svc in services.items():
        argv = _argv(svc["command"])
        if argv[:3] == ["prefect", "worker", "start"]:
            polled[_prefect_cli(argv)[1]["work_pool_name"]] = name
    assert polled, "the compose file must run a Prefect worker"
    scheduler_port = {name: int(_dask_cli(_argv(s["command"]))[1]["port"])
                      for name, s in services.items() if _argv(s["command"])[:2] == ["dask", "scheduler"]}
    for dep in deployments:
        pool = dep["work_pool"]["name"]
        assert pool in polled or f"prefect worker start --pool {pool}" in docs, (
            f"deployment {dep['name']}: no compose service or documented worker polls pool {pool}")
        address = (dep["parameters"]["config"].get("dask") or {}).get("address")
        if address:
            url = urlparse(address)
            assert url.scheme == "tcp" and scheduler_port.get(url.hostname) == url.port, (
                f"deployment {dep['name']}: {address} is not the compose scheduler")
            assert pool in polled, f"deployment {dep['name']} uses the compose scheduler, so its pool must be polled there"
    # the compose `register` service registers deployments that exist and run on the compose worker
    argv = _argv(services["register"]["command"])
    command, args = _prefect_cli(argv)
    assert command.__name__ == "deploy" and Path(REPO / args["prefect_file"]).is_file()
    by_name = {d["name"]: d for d in deployments}
    for name in args["names"]:
        assert by_name[name]["work_pool"]["name"] in polled


# --------------------------------------------------------------------------------------------- compose


def test_compose_services_parse_with_their_cli():
    doc = _compose()
    services = doc["services"]
    assert {"prefect-server", "prefect-worker", "scheduler", "worker"} <= set(services)
    seen = set()
    for name, svc in services.items():
        argv = _argv(svc["command"])
        if argv[0] == "prefect":
            command, args = _prefect_cli(argv)
            seen.add(f"{command.__module__}.{command.__name__}")
        else:
            cmd, args = _dask_cli(argv)
            seen.add(cmd)
            if cmd == "dask-worker":
                scheduler = urlparse(args["scheduler"])
                assert scheduler.hostname in services and scheduler.port == 8786
        build = svc["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).is_file(), name
        for port in svc.get("ports", []):
            host, container = port.split(":")
            assert 0 < int(host) < 65536 and 0 < int(container) < 65536, (name, port)
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), (name, volume)
            assert source in doc.get("volumes", {}) or source.startswith("."), f"{name}: volume {source!r} undefined"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
        if "healthcheck" in svc:
            test = svc["healthcheck"]["test"]
            assert test[:3] == ["CMD", "python", "-c"]
            compile(test[3], f"{name}.healthcheck", "exec")
        api = (svc.get("environment") or {}).get("PREFECT_API_URL")
        if api:
            url = urlparse(api)
            server_args = _prefect_cli(_argv(services[url.hostname]["command"]))[1]
            assert url.port == server_args["port"] and url.path == "/api"
    assert {"prefect.cli.server.start", "prefect.cli.worker.start", "dask-scheduler", "dask-worker"} <= seen


def test_cli_parsers_reject_bad_arguments():
    """The parsers above really check (so a passing test means the commands are well-formed)."""
    import click
    from cyclopts.exceptions import CycloptsError

    with pytest.raises(click.UsageError):
        _dask_cli(["dask", "worker", "tcp://scheduler:8786", "--nthread", "2"])
    with pytest.raises(CycloptsError):
        _prefect_cli(["prefect", "worker", "start", "--poool", "s2pipe-process"])


# --------------------------------------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    import io

    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))  # a path not named Dockerfile reads as a folder
    return [(i["instruction"], i["value"]) for i in parser.structure]


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_dockerfiles(variant):
    path = DOCKERFILES[variant]
    assert path.read_text().startswith("#"), "header comment with the build command"
    steps = _instructions(path)
    base = next(v for i, v in steps if i == "FROM")
    ignored = [ln.strip() for ln in (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    for instr, value in steps:
        if instr == "COPY":
            *sources, _ = value.split()
            for src in sources:
                assert (REPO / src).exists(), f"{path.name}: COPY source {src} missing"
                assert src.rstrip("/") not in ignored, f"{path.name}: COPY source {src} is excluded by .dockerignore"
    pip = " ".join(v for i, v in steps if i == "RUN" and "pip install" in v)
    assert '"torch==2.13.0"' in pip and '"fastapi<0.155"' in pip and ".[cluster]" in pip
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in deps and "fastapi<0.155" in deps, "Docker pins must match pyproject's"
    index = re.search(r"--index-url https://download.pytorch.org/whl/(\w+)", pip).group(1)
    if variant == "cpu":
        assert index == "cpu" and base.startswith("python:3.11")
    else:
        m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(cudnn-)?runtime-ubuntu[\d.]+", base)
        assert m, f"CUDA base {base!r} must be an nvidia/cuda runtime image"
        assert index == f"cu{m.group(1)}{m.group(2)}", f"torch index {index} must match the CUDA {m.group(1)}.{m.group(2)} base"


# --------------------------------------------------------------------------------------------- cluster specs


@pytest.mark.parametrize("name", SPECS)
def test_shipped_specs_load(name):
    path = DEPLOY / "dask" / name
    assert path.read_text().startswith("#")
    spec = load_cluster_spec(path)
    assert isinstance(spec, ClusterSpec) and spec.source == path


def test_slurm_spec_builds_real_cluster_without_submitting():
    spec = load_cluster_spec(DEPLOY / "dask" / "slurm.yaml")
    cluster = create_cluster(spec)
    try:
        assert type(cluster).__name__ == "SLURMCluster"
        script = cluster.job_script()
        assert cluster.workers == {} and cluster.worker_spec == {}, "building must not submit jobs"
    finally:
        cluster.close()
    assert "#SBATCH --constraint=cpu" in script and "#SBATCH -t 04:00:00" in script
    assert "#SBATCH --cpus-per-task=8" in script and "--nworkers 4" in script and "--nthreads 2" in script
    assert "--lifetime 3h50m" in script and "--local-directory $TMPDIR" in script
    worker_args = shlex.split(script.splitlines()[-1])
    i = worker_args.index("distributed.cli.dask_worker")
    _dask_cli(["dask-worker", *worker_args[i + 1:]])  # the worker command line parses


def test_cluster_check_cli(capsys):
    cluster_main([str(DEPLOY / "dask" / "local.yaml"), "--check"])
    assert "valid local cluster spec" in capsys.readouterr().out


def test_daskcluster_manifest_matches_crd():
    import dask_kubernetes

    crd = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds" / "daskcluster.yaml"
    assert crd.is_file()
    spec = load_cluster_spec(DEPLOY / "dask" / "kubernetes-spec.yaml")
    manifest = spec.manifest
    assert manifest == yaml.safe_load((DEPLOY / "dask" / "kubernetes.yaml").read_text())
    assert daskcluster_schema_errors(manifest) == []
    assert daskcluster_crd_schema()["required"] == ["scheduler", "worker"]
    ports = {}
    for role in ("scheduler", "worker"):
        for container in manifest["spec"][role]["spec"]["containers"]:
            cmd, args = _dask_cli(container["args"])
            assert cmd == f"dask-{role}"
            ports.update({p["name"]: p["containerPort"] for p in container.get("ports", [])})
            if role == "scheduler":
                assert int(args["port"]) == ports["tcp-comm"]
                assert args["dashboard_address"].endswith(str(ports["http-dashboard"]))
    for p in manifest["spec"]["scheduler"]["service"]["ports"]:
        assert p["targetPort"] in ports
    # the schema check really rejects typos and wrong types
    bad = yaml.safe_load((DEPLOY / "dask" / "kubernetes.yaml").read_text())
    bad["spec"]["worker"]["replicaz"] = 8
    bad["spec"]["worker"]["spec"]["containers"][0]["image"] = 7
    errors = "\n".join(daskcluster_schema_errors(bad))
    assert "spec.worker: Additional properties are not allowed ('replicaz'" in errors
    assert "spec.worker.spec.containers.0.image: 7 is not of type 'string'" in errors


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: pbs\noptions: {}\n", ["kind = 'pbs'", "local, slurm, kubernetes"]),
        ("kind: local\nscal: {workers: 2}\n", ["unknown key 'scal'", "did you mean 'scale'"]),
        ("kind: slurm\noptions: {cores: 8, memory: 8GiB, corse: 4}\n", ["options.corse = 4: unknown key", "did you mean 'cores'"]),
        ("kind: slurm\noptions: {cores: eight, memory: 8GiB}\n", ["options.cores = 'eight'", "write an integer"]),
        ("kind: slurm\noptions: {cores: 8}\n", ["options.memory", "Field required", "add it"]),
        ("kind: slurm\noptions: {cores: 8, memory: lots}\n", ["options.memory = 'lots'", "4GiB"]),
        ("kind: slurm\noptions: {cores: 8, memory: 8GiB, walltime: 4h}\n", ["walltime '4h'", "04:00:00"]),
        ("kind: local\nscale: {jobs: 2}\n", ["scale.jobs is for kind slurm only", "{workers: N}"]),
        ("kind: local\nadapt: {minimum: 4, maximum: 2}\n", ["adapt = {'minimum': 4, 'maximum': 2}", "minimum 4 is above maximum 2; swap"]),
        ("kind: local\nwait_for_workers: -1\n", ["wait_for_workers = -1", "greater than or equal to 0"]),
        ("kind: kubernetes\noptions: {manifest: missing.yaml}\n", ["missing.yaml (from cluster spec", "does not exist", "options.manifest"]),
        ("- kind: local\n", ["must hold a mapping"]),
    ],
)
def test_bad_specs_name_file_key_value_and_fix(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_cluster_spec(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_bad_daskcluster_manifest(tmp_path):
    manifest = yaml.safe_load((DEPLOY / "dask" / "kubernetes.yaml").read_text())
    manifest["spec"]["worker"]["replicas"] = "eight"
    _write(tmp_path, yaml.safe_dump(manifest), "cluster.yaml")
    spec = _write(tmp_path, "kind: kubernetes\noptions: {manifest: cluster.yaml}\n")
    with pytest.raises(InputError, match=r"cluster.yaml \(from cluster spec .*spec.yaml\) does not match the DaskCluster CRD"
                                         r"[\s\S]*spec.worker.replicas: 'eight' is not of type 'integer'"):
        load_cluster_spec(spec)


def test_address_and_spec_are_exclusive():
    from s2pipe.config import load_config

    message = "dask.address 'tcp://scheduler:8786' and dask.spec 'deploy/dask/local.yaml' are both set"
    with pytest.raises(InputError, match=message):  # the run configuration refuses it up front
        load_config({"bbox": [1, 2, 3, 4], "start": "2021-01-01", "end": "2021-02-01",
                     "dask": {"address": "tcp://scheduler:8786", "spec": "deploy/dask/local.yaml"}})
    settings = DaskConfig.model_construct(address="tcp://scheduler:8786", spec="deploy/dask/local.yaml")
    with pytest.raises(InputError, match=message):  # and so does the client, for settings built unchecked
        with dask_client(settings):
            pass


def test_dask_client_runs_on_a_local_spec(tmp_path):
    import dask.array as da

    path = _write(tmp_path, "kind: local\noptions: {n_workers: 0, processes: false, threads_per_worker: 1, memory_limit: 1GiB}\n"
                            "scale: {workers: 1}\nwait_for_workers: 1\nwait_timeout: 30\n")
    with dask_client(DaskConfig(spec=str(path))) as client:
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert int(da.arange(1000, chunks=100).sum().compute()) == 499500
    assert client.status == "closed"


def test_docs_reference_existing_files():
    docs = (REPO / "docs" / "deployment.md").read_text()
    paths = set(re.findall(r"(?<![\w/])((?:deploy|flows|examples)/[\w./-]+\.(?:ya?ml|py|md)|deploy/Dockerfile(?:\.cuda)?)", docs))
    assert paths, "docs/deployment.md should point at the deploy files"
    for p in paths:
        assert (REPO / p).exists(), f"docs/deployment.md mentions {p}, which does not exist"
    for spec in SPECS:
        assert f"deploy/dask/{spec}" in docs
