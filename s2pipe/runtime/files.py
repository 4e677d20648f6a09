"""Safe local file writes: the one atomic write of s2pipe (a unique temporary name beside the target, then a
rename), and the check whether the process that left a temporary file behind is still alive.

Used by every writer of a single file: COGs (``products.cog``), GeoPackages (``products.maps``), JSON state and
summaries (``store.zarr.write_json``) and model files (``ml.weights``)."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "pid_alive"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, companions: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary path to write ``path`` under; renamed onto ``path`` when the block ends without an error.

    The temporary file is ``.<stem>.part-<random><suffix>`` in the same folder (so the rename is atomic, and
    drivers that go by the extension, such as GeoPackage, still see it). The parent folder is created. A reader
    never sees half a file; an error, or an interruption, leaves the previous ``path`` as it was and removes the
    temporary file.

    Parameters
    ----------
    path
        The file to write.
    companions
        Suffixes of side files a driver may create beside the temporary file (``("-wal", "-shm")`` for SQLite);
        they are removed afterwards.

    Yields
    ------
    Path
        The temporary path; write the whole file there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        for p in (tmp, *(tmp.with_name(tmp.name + c) for c in companions)):
            p.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
