"""Store stage: write a cube to a GIS-readable Zarr store, region by region and resumable (``zarr``); the
staging store that lets a streamed cube be read once (``staging``); and what a scheduled run must add to an
existing store (``incremental``)."""
from s2pipe.store.zarr import (
    append_cube,
    chunk_for,
    is_complete,
    lock_path,
    open_cube,
    store_state,
    write_cube,
    write_json,
)

__all__ = ["append_cube", "chunk_for", "is_complete", "lock_path", "open_cube", "store_state", "write_cube", "write_json"]
