"""Where each method looks, as QuPath-importable GeoJSON beside the report (focus.geojson).

A FeatureCollection in level-0 pixel coordinates (x right, y down, as QuPath and our
annotations use), one annotation per object, its class and colour in ``classification``:

    Peak: <method>       Point at each peak of the map (audit.json "peaks")
    Top patch            Polygon: the footprint square of each most attended patch
    Top 10%: <method>    MultiPolygon: the map's top TOP_FRACTION of tissue pixels (ties included,
                         `reports.audit.metrics.top_k_mask`); its outline passes half-way between the
                         centres of pixels inside and outside, so a pixel-centre rasterisation
                         (tiling.annotations.rasterize_lesions) gives the region back exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from skimage.measure import find_contours, points_in_poly

from explainers.methods.registry import title as method_title
from reports.audit.metrics import top_k_mask
from tiling.store import FOCUS_GEOJSON, atomic_path, open_patch_store
from tiling.store.maps import Maps

TOP_FRACTION = 0.10
TOP_PATCH, PEAK, TOP_REGION = "Top patch", "Peak: {}", "Top {:.0%}: {}"
TOP_PATCH_RGB = [255, 255, 255]


def method_colour(methods: list[str], method: str) -> list[int]:
    """A method's RGB colour (0..255) in QuPath: tab10 in the audit's method order."""
    r, g, b, _ = matplotlib.colormaps["tab10"](methods.index(method) % 10)
    return [round(255 * r), round(255 * g), round(255 * b)]


def _feature(geometry: dict[str, Any], name: str, cls: str, colour: list[int],
             measurements: dict[str, float]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry,
            "properties": {"objectType": "annotation", "name": name, "isLocked": True,
                           "classification": {"name": cls, "color": colour},
                           "measurements": measurements}}


def corner_rings(contours: list[np.ndarray], downsample: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Closed (K, 2) (row, col) contours of the padded map -> closed x, y rings in level-0 px
    without the vertices that lie on a straight line between their neighbours (the same
    polygon; marching squares puts one on every pixel edge), and each ring's signed area (shoelace
    formula). All rings at once: a ring's first vertex follows its last."""
    points = np.concatenate([(c[:-1, ::-1] - 0.5) * downsample for c in contours])
    sizes = np.array([len(c) - 1 for c in contours])
    starts = np.cumsum(sizes) - sizes
    index = np.arange(len(points))
    ring_start, ring_end = np.repeat(starts, sizes), np.repeat(starts + sizes - 1, sizes)
    following = np.where(index == ring_end, ring_start, index + 1)
    preceding = np.where(index == ring_start, ring_end, index - 1)
    before, after = points - points[preceding], points[following] - points
    keep = before[:, 0] * after[:, 1] != before[:, 1] * after[:, 0]
    x, y = points[:, 0], points[:, 1]
    areas = 0.5 * (np.add.reduceat(x * y[following], starts) - np.add.reduceat(y * x[following], starts))
    kept = np.split(points[keep], np.cumsum(np.add.reduceat(keep, starts))[:-1])
    return [np.vstack([ring, ring[:1]]) for ring in kept], areas


def mask_polygons(mask: np.ndarray, downsample: float) -> list[list[np.ndarray]]:
    """The regions of a bool (H, W) map mask as polygons ([exterior, *holes], closed (K, 2) x, y
    rings in level-0 px; map pixel (r, c) has its centre at ((c + 1/2)·D, (r + 1/2)·D)), traced
    by marching squares at level 1/2 around the 1-pixels (8-connected), corners only."""
    contours = find_contours(np.pad(np.asarray(mask, np.float32), 1), 0.5, fully_connected="high")
    if not contours:
        return []
    rings, areas = corner_rings(contours, downsample)
    outer_sign = np.sign(areas[int(np.argmax(np.abs(areas)))])  # the largest ring is an exterior
    outers = np.flatnonzero(np.sign(areas) == outer_sign).tolist()
    polygons = {i: [rings[i]] for i in outers}
    for i, ring in enumerate(rings):
        if i not in polygons:  # a hole: in the smallest exterior around it
            around = [j for j in outers if points_in_poly(ring[:1], rings[j])[0]]
            polygons[min(around, key=lambda j: abs(areas[j]))].append(ring)
    return list(polygons.values())


def _coordinates(ring: np.ndarray) -> list[list[float]]:
    return np.round(ring, 1).tolist()


def focus_features(audit: dict[str, Any], maps: Maps, footprint: float) -> list[dict[str, Any]]:
    """The peaks, top patches (squares of `footprint` level-0 px) and top regions of `audit`'s
    methods on `maps` as GeoJSON Features (module docstring)."""
    methods = list(audit["methods"])
    features = []
    for rank, patch in enumerate(audit["top_patches"], start=1):
        x, y = patch["x"], patch["y"]
        square = [[x, y], [x + footprint, y], [x + footprint, y + footprint], [x, y + footprint], [x, y]]
        features.append(_feature({"type": "Polygon", "coordinates": [square]},
                                 f"top patch {rank}", TOP_PATCH, TOP_PATCH_RGB,
                                 {"attention": patch["attention"]}))
    tissue = maps.tissue
    for method in methods:
        colour, title = method_colour(methods, method), method_title(method)
        for rank, peak in enumerate(audit["peaks"].get(method, []), start=1):
            features.append(_feature({"type": "Point", "coordinates": [peak["x"], peak["y"]]},
                                     f"{title} peak {rank}", PEAK.format(title), colour,
                                     {"value": peak["value"]}))
        values = maps[method]
        region = top_k_mask(values, tissue & np.isfinite(values), TOP_FRACTION)
        if region is None:   # ties fill the whole top share (e.g. a flat map): no top region
            continue
        polygons = [[_coordinates(r) for r in rings] for rings in mask_polygons(region, maps.downsample)]
        if polygons:
            features.append(_feature({"type": "MultiPolygon", "coordinates": polygons},
                                     f"{title} top {TOP_FRACTION:.0%}",
                                     TOP_REGION.format(TOP_FRACTION, title), colour,
                                     {"area_um2": float(region.sum()) * maps.pixel_um ** 2}))
    return features


def write_focus_geojson(slide_dir: Path, audit: dict[str, Any], maps: Maps) -> Path:
    """Write ``slide_dir/focus.geojson`` (atomic) for `audit` and the slide's maps."""
    footprint = float(open_patch_store(slide_dir).attrs["footprint"])
    collection = {"type": "FeatureCollection", "features": focus_features(audit, maps, footprint)}
    path = Path(slide_dir) / FOCUS_GEOJSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection), encoding="utf-8")
    return path
