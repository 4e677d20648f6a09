"""Serve ``regional-cube`` as a long-running Prefect deployment with a schedule.

    python -m s2pipe.flows.serve --config examples/demo.yaml --cron "0 3 * * 1"

Scheduled runs then appear in the Prefect UI/API (``PREFECT_API_URL``), and can also be triggered with
``prefect deployment run 'regional-cube/<name>'``. For work pools and workers use ``deploy/prefect.yaml``.
"""
from __future__ import annotations

import argparse

from s2pipe.config import load_config
from s2pipe.flows.regional_cube import regional_cube

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML run configuration used as the deployment's parameters")
    parser.add_argument("--name", default="regional-cube", help="deployment name")
    parser.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * 1' (none: run on demand)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    regional_cube.serve(name=args.name, cron=args.cron, parameters={"config": cfg.model_dump(mode="json")})


if __name__ == "__main__":
    main()
