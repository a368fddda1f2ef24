"""Annotations brought onto the slide: their scale, and a check that they fit before any metric.

Annotation coordinates = slide level-0 coordinates x the annotation downsample, taken from (first
given): the manifest's `annotation_downsample`; its `annotation_mpp` (downsample = slide mpp /
annotation mpp); an Aperio ImageScope XML's `MicronsPerPixel` attribute (likewise); else 1.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from tiling.annotations import Lesion
from tiling.errors import AnnotationError

MAX_OUTSIDE = 0.05  # most share of the annotated (bounding-box) area allowed outside the slide


def annotation_file_mpp(path: Path) -> float | None:
    """The `MicronsPerPixel` attribute of an Aperio ImageScope XML's root (None if absent or 0)."""
    if Path(path).suffix.lower() != ".xml":
        return None
    try:
        value = float(ET.parse(path).getroot().get("MicronsPerPixel") or 0)
    except (ET.ParseError, ValueError) as exc:
        raise AnnotationError(f"{path}: malformed annotation file: {exc}; fix or re-export it") from exc
    return value if math.isfinite(value) and value > 0 else None


def annotation_downsample(path: Path, slide_mpp: float, downsample: float | None = None,
                          mpp: float | None = None) -> tuple[float, str]:
    """(annotation px per slide level-0 px, its source: "manifest", "annotation_mpp", "file" or
    "none") for the annotation file `path` on a slide of `slide_mpp` µm/px (module docstring)."""
    if downsample is not None:
        return float(downsample), "manifest"
    if mpp is not None:
        return slide_mpp / mpp, "annotation_mpp"
    recorded = annotation_file_mpp(path)
    if recorded is not None:
        return slide_mpp / recorded, "file"
    return 1.0, "none"


def scaled(lesions: list[Lesion], downsample: float) -> list[Lesion]:
    """`lesions` in slide level-0 px: every coordinate divided by `downsample`."""
    if downsample == 1:
        return lesions
    return [replace(lesion, exterior=lesion.exterior / downsample,
                    holes=[h / downsample for h in lesion.holes]) for lesion in lesions]


def _outside_share(lesions: list[Lesion], width: int, height: int) -> float:
    """Share of the lesions' summed bounding-box area lying outside [0, width] x [0, height]."""
    total = inside = 0.0
    for lesion in lesions:
        x0, y0, x1, y1 = lesion.bounds()
        total += (x1 - x0) * (y1 - y0)
        inside += max(0.0, min(x1, width) - max(x0, 0)) * max(0.0, min(y1, height) - max(y0, 0))
    return 1 - inside / total if total > 0 else 0.0


def check_fit(path: Path, lesions: list[Lesion], dimensions: tuple[int, int], downsample: float) -> None:
    """AnnotationError naming `path` when more than MAX_OUTSIDE of the area of its `lesions` (slide
    level-0 px, after dividing by `downsample`) lies outside the slide of `dimensions` (W, H); the
    message estimates the annotation_downsample that would fit (a power of 2 times `downsample`)."""
    width, height = dimensions
    share = _outside_share(lesions, width, height)
    if share <= MAX_OUTSIDE:
        return
    x1 = max(lesion.bounds()[2] for lesion in lesions)
    y1 = max(lesion.bounds()[3] for lesion in lesions)
    ratio, reach, size, side = max((x1 / width, x1, width, "wide"), (y1 / height, y1, height, "high"))
    problem = f"{path}: {share:.0%} of the annotated area lies outside the slide"
    if ratio < 1.5:  # not a pyramid level's scale
        raise AnnotationError(f"{problem} (past its edges, not at another level's scale); check "
                              "that the file belongs to this slide")
    factor = downsample * 2 ** math.ceil(math.log2(ratio))
    raise AnnotationError(f"{problem}: coordinates reach {reach * downsample:,.0f} px but the slide is "
                          f"{size:,} px {side}: about {factor:g} x; set "
                          f"annotation_downsample={factor:g} in the manifest (annotation coordinates "
                          "= slide level-0 coordinates x this factor) or check that the file belongs "
                          "to this slide")
