"""Sentinel-2 MSI band table: canonical names, native resolution (m), centre wavelength (µm)."""
from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "Band", "BANDS", "SPECTRAL_10", "SCL", "BANDS_10M", "BANDS_20M", "SCL_CLASSES", "DEFAULT_CLEAR_CLASSES",
    "resolution_group", "check_bands",
]


class Band(NamedTuple):
    name: str
    resolution: int
    """Native ground sampling distance in metres."""
    wavelength: float | None
    """Centre wavelength in micrometres (None for SCL)."""
    common_name: str | None


BANDS: dict[str, Band] = {
    b.name: b
    for b in [
        Band("B01", 60, 0.443, "coastal"),
        Band("B02", 10, 0.490, "blue"),
        Band("B03", 10, 0.560, "green"),
        Band("B04", 10, 0.665, "red"),
        Band("B05", 20, 0.704, "rededge"),
        Band("B06", 20, 0.740, "rededge"),
        Band("B07", 20, 0.783, "rededge"),
        Band("B08", 10, 0.842, "nir"),
        Band("B8A", 20, 0.865, "nir08"),
        Band("B09", 60, 0.945, "nir09"),
        Band("B11", 20, 1.610, "swir16"),
        Band("B12", 20, 2.190, "swir22"),
        Band("SCL", 20, None, None),
    ]
}

SPECTRAL_10: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
"""The 10 bands of the spectral-dynamics paper (10 m and 20 m bands, no 60 m)."""

SCL = "SCL"

BANDS_10M: tuple[str, ...] = tuple(b for b in SPECTRAL_10 if BANDS[b].resolution == 10)
BANDS_20M: tuple[str, ...] = tuple(b for b in SPECTRAL_10 if BANDS[b].resolution == 20)

SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow",
}

DEFAULT_CLEAR_CLASSES: tuple[int, ...] = (4, 5, 6, 7)


def resolution_group(band: str) -> str:
    """'10m' or '20m' (the normalisation groups of the paper); '60m' for B01/B09."""
    return f"{BANDS[band].resolution}m"


def check_bands(bands: list[str] | tuple[str, ...], *, argument: str = "bands") -> tuple[str, ...]:
    """Validate band names; raise ``InputError`` naming the unknown one and the valid choices."""
    from s2pipe.errors import InputError, short_repr

    out = []
    for b in bands:
        key = b.upper() if isinstance(b, str) else None
        if key not in BANDS:
            raise InputError(
                f"unknown Sentinel-2 band {short_repr(b)} in {argument}; choose from {', '.join(BANDS)}"
            )
        out.append(key)
    if len(set(out)) != len(out):
        raise InputError(f"{argument} lists a band twice: {short_repr(list(bands))}")
    return tuple(out)
