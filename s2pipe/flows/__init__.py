"""Prefect flows: thin orchestration over the s2pipe stage functions (no numerical code here).

Importing this package (not its modules) imports nothing of Prefect's; it sets s2pipe's defaults of Prefect's
settings (``PREFECT_DEFAULTS``) in the environment, where they are not set already, before Prefect loads them."""
import os

__all__ = ["PREFECT_DEFAULTS"]

PREFECT_DEFAULTS: dict[str, str] = {
    # The first start of Prefect's temporary API server on a fresh machine runs its database migrations, which
    # can take longer than Prefect's 20 s default on a busy 2-core machine: give it time instead of failing.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Offline by default: no telemetry.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Prefect settings s2pipe changes from Prefect's own defaults (an environment variable set by the user wins)."""

for _name, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
