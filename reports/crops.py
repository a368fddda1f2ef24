"""Close-ups for the report: windows of the slide read through OpenSlide at a useful level
(around each lesion and each map's top peak), with the map and the lesion outline as layers.

A window is a level-0 box (x0, y0, x1, y1); its output pixel (i, j) of an (h, w) view has its
centre at level-0 (x0 + (j + 1/2)·(x1 - x0)/w, y0 + (i + 1/2)·(y1 - y0)/h), which lies on map
pixel (that / D - 1/2) in map-pixel-centre units (`window`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from reports import figures as F
from tiling.errors import SlideError
from tiling.slide import open_slide
from tiling.store import open_patch_store
from tiling.store.maps import ATTENTION, LESION, Maps

log = logging.getLogger(__name__)

CROP_SIDE = 512  # px of a close-up's longer side
MAX_LESION_CROPS = 4  # the largest lesions get a close-up each
PEAK_FIELD = 3  # a peak's close-up spans this many patch footprints
Box = tuple[float, float, float, float]


def window(values: Any, downsample: float, box: Box, shape: tuple[int, int], order: int = 0,
           mask: bool = False) -> np.ndarray:
    """`values` (H, W, a map of D = `downsample` level-0 px per px; a NumPy or a lazy zarr array,
    of which only the part under `box` is read) resampled onto the (h, w) view of the level-0
    `box` (module docstring): nearest (order 0) or bilinear (order 1); with `mask`, `values > 0`
    is resampled (a label image as one mask)."""
    x0, y0, x1, y1 = box
    cols = (x0 + (np.arange(shape[1]) + 0.5) * (x1 - x0) / shape[1]) / downsample - 0.5
    rows = (y0 + (np.arange(shape[0]) + 0.5) * (y1 - y0) / shape[0]) / downsample - 0.5
    r0, c0 = max(0, math.floor(rows.min())), max(0, math.floor(cols.min()))
    part = np.asarray(values[r0:max(r0 + 1, math.floor(rows.max()) + 2), c0:max(c0 + 1, math.floor(cols.max()) + 2)])
    part = (part > 0 if mask else part).astype(np.float64)
    grid = np.meshgrid(rows - r0, cols - c0, indexing="ij")
    return ndimage.map_coordinates(part, grid, order=order, mode="nearest")


def lesion_view(maps: Maps, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """The lesion mask on the view of `box`: bilinear, cut at 1/2 (smooth at any zoom)."""
    return window(maps.pyramid(LESION)[0].array, maps.downsample, box, shape, order=1, mask=True) > 0.5


def _clip(box: Box, dimensions: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = box
    return max(0.0, x0), max(0.0, y0), min(float(dimensions[0]), x1), min(float(dimensions[1]), y1)


def windows(audit: dict[str, Any], maps: Maps, footprint: float) -> list[dict[str, Any]]:
    """The close-ups to show: each of the MAX_LESION_CROPS largest lesions (its box padded by a
    quarter of its size and at least a patch footprint; the attention map on top) and each
    method's top peak (PEAK_FIELD footprints around it; that method's map on top)."""
    labels, d = maps.lesion, maps.downsample
    dimensions = (int(maps.attrs["dimensions"][0]), int(maps.attrs["dimensions"][1]))
    names = list(maps.attrs.get("lesion_names", []))
    found = [(k + 1, s) for k, s in enumerate(ndimage.find_objects(labels)) if s is not None]
    found.sort(key=lambda ks: -int((labels[ks[1]] == ks[0]).sum()))
    out = []
    for k, (rows, cols) in found[:MAX_LESION_CROPS]:
        x0, y0, x1, y1 = cols.start * d, rows.start * d, cols.stop * d, rows.stop * d
        pad = max(0.25 * max(x1 - x0, y1 - y0), footprint)
        title = names[k - 1] if k <= len(names) else f"lesion {k}"
        out.append({"title": f"Lesion: {title}", "method": ATTENTION,
                    "box": _clip((x0 - pad, y0 - pad, x1 + pad, y1 + pad), dimensions)})
    half = PEAK_FIELD * footprint / 2
    for method in audit["methods"]:
        if audit["peaks"].get(method):
            x, y = audit["peaks"][method][0]["x"], audit["peaks"][method][0]["y"]
            out.append({"title": "Top peak", "method": method,
                        "box": _clip((x - half, y - half, x + half, y + half), dimensions)})
    return out


def slide_crops(slide_dir: Path, audit: dict[str, Any], maps: Maps,
                scales: dict[str, Callable[[np.ndarray], np.ndarray]]) -> tuple[list[dict[str, Any]], str | None]:
    """The close-ups (`windows`) read from the slide recorded in patches.zarr, each as a JPEG
    with its map layer (coloured by `scales`; None for a map without one: no positive evidence)
    and outline layer; and a note
    when the slide cannot be read or is not the audited one by its size (then no close-ups: the
    report says so)."""
    store = open_patch_store(slide_dir)
    source, mpp = Path(str(store.attrs["source_path"])), float(store.attrs["slide_mpp"])
    try:
        slide = open_slide(source, mpp=mpp)
    except SlideError as exc:
        log.warning("%s: no close-ups in the report: %s", slide_dir, exc)
        return [], f"No close-ups: {exc}"
    expected = tuple(int(v) for v in maps.attrs["dimensions"])
    if tuple(slide.dimensions) != expected:
        slide.close()
        note = (f"No close-ups: {source} is {slide.dimensions[0]} x {slide.dimensions[1]} px, the audited "
                f"slide {expected[0]} x {expected[1]} px; rerun the pipeline on the slide now at that path")
        log.warning("%s: %s", slide_dir, note)
        return [], note
    crops = []
    with slide:
        for view in windows(audit, maps, float(store.attrs["footprint"])):
            x0, y0, x1, y1 = view["box"]
            scale = min(1.0, CROP_SIDE / max(x1 - x0, y1 - y0))
            shape = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
            rgb = slide.read_at_mpp((round(x0), round(y0)), (shape[1], shape[0]), mpp / scale)
            colour = scales.get(view["method"])
            heat = None if colour is None else F.heat_layer(colour(window(
                maps.pyramid(view["method"])[0].array, maps.downsample, view["box"], shape)))
            crops.append({**view, "uri": F.jpeg_data_uri(rgb, quality=80), "width": shape[1],
                          "height": shape[0], "um": (x1 - x0) * mpp,
                          "heat": None if heat is None else F.png_data_uri(heat),
                          "marks": F.marks_data_uri(F.marks_layer(lesion_view(maps, view["box"], shape)))})
    return crops, None
