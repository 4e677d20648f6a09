"""Safe local file writes: the one atomic write of s2pipe (a unique temporary name beside the target, then a
rename), and the check whether the process that left a temporary file behind is still alive.

Used by every writer of a single file: COGs (``products.cog``), GeoPackages (``products.maps``), JSON state and
summaries (``store.zarr.write_json``) and model files (``ml.weights``).

And the one bounded read of a YAML file (``read_yaml``: run configurations, catalog profiles), which hostile
input cannot stretch: size, aliases, values, depth."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from s2pipe.errors import InputError
from s2pipe.errors import clip_text as _clip

__all__ = ["atomic_path", "write_if_changed", "pid_alive", "read_yaml", "MAX_CONFIG_BYTES", "MAX_YAML_NODES", "MAX_YAML_DEPTH",
           "MAX_SCALAR_CHARS"]

MAX_CONFIG_BYTES = 1 << 20
"""Largest configuration (or catalog profile) file read, in bytes (1 MiB; a run configuration is ~300 bytes)."""
MAX_YAML_NODES = 50_000
"""Most YAML values (scalars, lists, mappings) in one file: room for a geometry of ``MAX_VERTICES`` vertices."""
MAX_YAML_DEPTH = 32
"""Deepest YAML nesting (a MultiPolygon geometry needs 7 levels)."""
MAX_SCALAR_CHARS = 4096
"""Longest YAML scalar (a path or URL)."""


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


def write_if_changed(path: str | os.PathLike, content: bytes) -> bool:
    """Write ``content`` to ``path`` atomically (``atomic_path``) unless the file already holds exactly these
    bytes (an index or metadata file rewritten on every run keeps its modification time). Returns whether it
    wrote."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == content:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_yaml(path: str | os.PathLike, *, what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """Read one YAML document from ``path`` within bounds that hostile input cannot stretch.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    what : str, default "config file"
        What the file is, for the messages.
    max_bytes : int, default ``MAX_CONFIG_BYTES``
        Largest file read.

    Returns
    -------
    Any
        The document (``yaml.safe_load``'s types).

    Raises
    ------
    InputError
        The file does not exist or cannot be read, is larger than ``max_bytes``, is not valid YAML, uses an alias
        (``*name``; refused outright: a few hundred bytes of nested aliases expand to gigabytes), holds more than
        ``MAX_YAML_NODES`` values, nests deeper than ``MAX_YAML_DEPTH`` or holds a value longer than
        ``MAX_SCALAR_CHARS`` characters.
    """
    name = _clip(os.fspath(path), 200)
    path = Path(path)
    try:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise InputError(f"{what} {name} {problem}; pass the path of a YAML file")
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:  # a name too long, no permission, ...
        raise InputError(f"{what} {name} cannot be read: {exc.strerror}; pass the path of a YAML file") from None
    if len(raw) > max_bytes:
        raise InputError(f"{what} {name} is larger than {max_bytes:,} bytes ({path.stat().st_size:,} bytes); "
                         "a run configuration is a few hundred bytes: remove what does not belong, or give a large "
                         "region as a bbox or a simplified geometry")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~5x faster on the largest files accepted
    try:
        _check_events(yaml.parse(raw, Loader=loader), what=f"{what} {name}")
        return yaml.load(raw, Loader=loader)
    except InputError:
        raise
    except yaml.YAMLError as exc:  # PyYAML's own text quotes the file (a profile's URL may hold a secret): not shown
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"{what} {name} is not valid YAML: {_clip(str(problem), 200)}{where}; fix its syntax") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date 2021-13-45, an int of 5000 digits
        raise InputError(f"{what} {name} holds a value YAML cannot read: {_clip(str(exc), 200)}; fix it") from None


def _check_events(events, *, what: str) -> None:
    """Refuse aliases, more than ``MAX_YAML_NODES`` values, nesting deeper than ``MAX_YAML_DEPTH`` and scalars
    longer than ``MAX_SCALAR_CHARS``, reading the parser's events (nothing is built)."""
    nodes = depth = 0
    for event in events:
        line = f"line {event.start_mark.line + 1}" if event.start_mark else "somewhere"
        if isinstance(event, yaml.AliasEvent):
            raise InputError(f"{what} uses the YAML alias *{_clip(str(event.anchor), 40)} ({line}); aliases (also in "
                             "merge keys <<: *name) are refused, as a few of them can expand a small file to "
                             "gigabytes: write the value out in full")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise InputError(f"{what} holds more than {MAX_YAML_NODES:,} YAML values ({line}); a run "
                                 "configuration needs a few dozen (and a geometry of 10,000 vertices fits): "
                                 "simplify the geometry or pass a bbox")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise InputError(f"{what} holds a value of {len(event.value):,} characters ({line}); values are at most "
                             f"{MAX_SCALAR_CHARS:,} characters: shorten it")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise InputError(f"{what} nests deeper than {MAX_YAML_DEPTH} levels ({line}); a run configuration "
                                 "needs at most 7 (a MultiPolygon geometry): flatten it")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
