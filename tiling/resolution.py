"""A slide's level-0 resolution (µm/px): what the file records, what the user declares, which wins.

Precedence: the manifest column `mpp` > the flag `--slide-mpp` > the file's tags. A recorded value
is treated as missing when it is implausible for a slide scanner: outside PLAUSIBLE_MPP, or
derived from a TIFF's default dpi (resolution unit none/inch with 72, 96 or 300 px per unit).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import openslide

from tiling.config import PLAUSIBLE_MPP, plausible
from tiling.errors import SlideError

__all__ = ["PLAUSIBLE_MPP", "Resolution", "plausible", "recorded_mpp", "resolve_mpp"]

log = logging.getLogger(__name__)

DEFAULT_DPI = (72.0, 96.0, 300.0)  # image editors' and libraries' default TIFF resolutions
DIFFERS = 0.05  # a declared value further than this (relative) from the file's is warned about
DECLARE = ("declare the slide's level-0 µm/px with the manifest column `mpp` or --slide-mpp "
           "(e.g. 0.25 at 40x, 0.5 at 20x)")


@dataclass(frozen=True)
class Resolution:
    """mpp: level-0 µm/px; source: where it came from ("file", "manifest" or "flag")."""

    mpp: float
    source: str


def recorded_mpp(properties: Mapping[str, str]) -> tuple[float | None, str]:
    """(the file's plausible level-0 µm/px or None, what the file records in words)."""
    text = properties.get(openslide.PROPERTY_NAME_MPP_X)
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    try:
        dpi = float(properties.get("tiff.XResolution", "nan"))
    except ValueError:
        dpi = math.nan
    if unit in ("", "none", "inch") and dpi in DEFAULT_DPI:
        return None, (f"the file's resolution is a TIFF default ({dpi:g} px per {unit or 'unit'}), "
                      "not a scanner's")
    if not text:
        return None, "the file records no resolution (microns per pixel)"
    try:
        value = float(text)
    except ValueError:
        return None, f"the file records an unreadable resolution {text!r}"
    if not plausible(value):
        return None, (f"the file records {value:.4g} µm/px, outside the plausible "
                      f"{PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px")
    return value, f"the file records {value:.4g} µm/px"


def resolve_mpp(where: str, properties: Mapping[str, str], given: float | None,
                source: str = "flag") -> Resolution:
    """The slide's level-0 resolution: `given` (declared by `source`, "manifest" or "flag") when
    not None, else the file's (`recorded_mpp`). Warns when `given` differs from a plausible
    recorded value by more than DIFFERS; raises SlideError naming `where` (the file) and what to
    declare when neither gives a plausible value."""
    recorded, found = recorded_mpp(properties)
    if given is None:
        if recorded is None:
            raise SlideError(f"{where}: {found}; {DECLARE}")
        return Resolution(recorded, "file")
    if not plausible(given):
        raise SlideError(f"{where}: the {source} declares {given:g} µm/px, outside the plausible "
                         f"{PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px; {DECLARE}")
    if recorded is not None and abs(given - recorded) > DIFFERS * recorded:
        log.warning("%s: %s; using %g µm/px from the %s", where, found, given, source)
    return Resolution(float(given), source)
