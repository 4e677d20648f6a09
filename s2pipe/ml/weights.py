"""Write and read s2pipe model files (``DynamicsModel.save``, ``Mapper.save``, ``TreeMapper.save``): one torch
file holding a dict of tensors and JSON strings, written atomically and read without executing code."""
from __future__ import annotations

from pathlib import Path

import torch

from s2pipe.errors import InputError
from s2pipe.runtime.files import atomic_path

__all__ = ["save_payload", "read_payload"]


def save_payload(payload: dict, path) -> Path:
    """Write ``payload`` (a dict of tensors, strings and numbers with a ``format`` key) to ``path`` with
    ``torch.save``, under a temporary name beside it first and then renamed: a reader never sees half a file,
    and an interrupted save leaves the previous file intact. Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_payload(path, *, fmt: str | tuple[str, ...], what: str, owner: str) -> dict:
    """The dict saved at ``path`` by ``torch.save``, loaded with ``weights_only=True`` and checked to carry
    ``format == fmt`` (or one of the formats of a tuple). ``what``: the object named in errors ("dynamics
    model"); ``owner``: the variable whose ``.save`` wrote it ("model")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{owner} file {str(path)!r} does not exist; pass the path given to {owner}.save")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise InputError(f"{str(path)!r} is not a saved s2pipe {what} ({e})") from None
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        want = formats[0] if len(formats) == 1 else " or ".join(formats)
        raise InputError(f"{str(path)!r} is not a saved s2pipe {what} (format {want!r})")
    return payload
