"""Prefect flows: thin orchestration over the s2pipe stage functions (no numerical code here)."""
import os

# The first start of Prefect's ephemeral API server on a fresh machine runs its database migrations, which can
# take longer than Prefect's 20 s default on a busy 2-core machine; give it time instead of failing the run.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
