"""Read model files written by s2pipe (``DynamicsModel.save``, ``Mapper.save``) without executing code."""
from __future__ import annotations

from pathlib import Path

import torch

from s2pipe.errors import InputError


def read_payload(path, *, fmt: str, what: str, owner: str) -> dict:
    """The dict saved at ``path`` by ``torch.save``, loaded with ``weights_only=True`` and checked to carry
    ``format == fmt``. ``what``: the object named in errors ("dynamics model"); ``owner``: the variable
    whose ``.save`` wrote it ("model")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{owner} file {str(path)!r} does not exist; pass the path given to {owner}.save")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise InputError(f"{str(path)!r} is not a saved s2pipe {what} ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(f"{str(path)!r} is not a saved s2pipe {what} (format {fmt!r})")
    return payload
