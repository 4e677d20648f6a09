"""Prefect flows: thin orchestration over the s2pipe stage functions (no numerical code here)."""
