"""The audit as QuPath-importable GeoJSON beside the report: two files, because they are used
apart. focus.geojson holds a few annotations (where each method looks, the lesions audited);
tiles.geojson one detection tile per patch with its measurements, for QuPath's measurement
maps: thousands of objects, replaced ("Delete all detections") on a re-audit without touching
the user's own annotations, and left out by a user who only wants the focus.

Both are FeatureCollections in level-0 pixel coordinates (x right, y down, as QuPath and our
annotations use), in QuPath's own GeoJSON (qupath.lib.io.PathObjectTypeAdapters): each feature's
``properties`` hold ``objectType``, ``name``, ``classification`` {name, color [r, g, b]} and
``measurements``, a flat name -> number map. JSON has no NaN: a measurement without a finite
value is left out (QuPath shows a missing measurement as NaN and leaves the tile uncoloured).
Polygon rings are closed, the exterior counter-clockwise and holes clockwise (RFC 7946, the
signed area taken on x, y as written).

focus.geojson, one annotation per object:

    Peak: <method>       Point at each peak of the map (audit.json "peaks")
    Top patch            Polygon: the footprint square of each most attended patch
    Top 10%: <method>    MultiPolygon: the map's top TOP_FRACTION of tissue pixels (ties included,
                         `reports.audit.metrics.top_k_mask`); its outline passes half-way between the
                         centres of pixels inside and outside, so a pixel-centre rasterisation
                         (tiling.annotations.rasterize_lesions) gives the region back exactly.
    Audited lesion       MultiPolygon: each lesion of maps.zarr's lesion label, as the audit counted
                         it (after scaling and holes), traced on the map's pixels likewise

tiles.geojson, one ``tile`` detection per patch (its footprint square, clipped to the slide):

    measurements   Attention (A-MIL, summing to 1 over the slide), Attention rank (percentile
                   among the slide's patches, 0..1: comparable between slides), "<method> mean"
                   (each CAM method's raw values averaged over the patch's cells in explain.zarr),
                   "Artefact share: <kind>" (fraction of the footprint under each kind),
                   Lesion share (fraction of the map pixels whose centres lie in the patch that
                   are on an audited lesion), Tissue share (the tile stage's tissue fraction)
    classification Tile: <kind> for a patch on an artefact (its dominant kind), else Tile: lesion
                   when its lesion share is >= LESION_TILE, else Tile: tissue
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np

from explainers.methods.registry import title as method_title
from reports.audit.metrics import top_k_mask
from tiling.artefacts import ARTEFACT_KINDS
from tiling.stitch import PatchGrid, percentile_rank
from tiling.store import EXPLAIN, FOCUS_GEOJSON, TILES_GEOJSON, PatchStore, atomic_path, open_patch_store
from tiling.store.explain import open_explain_store
from tiling.store.maps import ARTEFACTS, LABEL_RGBA, LESION, TISSUE, Maps

TOP_FRACTION = 0.10
TOP_PATCH, PEAK, TOP_REGION, AUDITED_LESION = "Top patch", "Peak: {}", "Top {:.0%}: {}", "Audited lesion"
TOP_PATCH_RGB = [255, 255, 255]
ATTENTION, ATTENTION_RANK, METHOD_MEAN = "Attention", "Attention rank", "{} mean"
ARTEFACT_SHARE, LESION_SHARE, TISSUE_SHARE = "Artefact share: {}", "Lesion share", "Tissue share"
TILE_CLASS = "Tile: {}"
LESION_TILE = 0.5  # lesion share from which a tile not on an artefact is classed a lesion tile


def method_colour(methods: list[str], method: str) -> list[int]:
    """A method's RGB colour (0..255) in QuPath: tab10 in the audit's method order."""
    r, g, b, _ = matplotlib.colormaps["tab10"](methods.index(method) % 10)
    return [round(255 * r), round(255 * g), round(255 * b)]


def _rgb(rgba: tuple[int, ...]) -> list[int]:
    return [int(v) for v in rgba[:3]]


def _feature(geometry: dict[str, Any], name: str, cls: str, colour: list[int],
             measurements: dict[str, float], object_type: str = "annotation") -> dict[str, Any]:
    """A QuPath feature; measurements without a finite value are left out (JSON has no NaN)."""
    finite = {k: float(v) for k, v in measurements.items() if np.isfinite(v)}
    properties: dict[str, Any] = {"objectType": object_type, "name": name,
                                  "classification": {"name": cls, "color": colour},
                                  "measurements": finite}
    if object_type == "annotation":
        properties["isLocked"] = True
    return {"type": "Feature", "geometry": geometry, "properties": properties}


# OpenCV's border following: 8-neighbour steps (dx, dy) of a border pixel to the next (y down,
# clockwise on screen); the even ones cross a pixel's sides (east, south, west, north)
STEPS = np.array([(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)])
STEP_CODE = np.zeros((3, 3), np.int8)
STEP_CODE[STEPS[:, 1] + 1, STEPS[:, 0] + 1] = np.arange(8)
STEP_CODE[1, 1] = 1  # a one-pixel border arrives from and leaves to itself: all four sides


def _outside_sides() -> np.ndarray:
    """(8, 8, 4) int8: [back, ahead] -> the sides (STEPS codes, -1 padded) of a border pixel
    reached from its neighbour `back` and left to `ahead` that face the outside: those turned
    past going anticlockwise from `back` to `ahead`, which the border following found empty."""
    table = np.full((8, 8, 4), -1, np.int8)
    for back in range(8):
        for ahead in range(8):
            turned = [(back - k) % 8 for k in range(1, 8)]
            sides = [k for k in turned[:turned.index(ahead) if ahead != back else 7] if k % 2 == 0]
            table[back, ahead, :len(sides)] = sides
    return table


OUTSIDE_SIDES = _outside_sides()


def _neighbours(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings of `sizes` points stored one after another: each ring's start, and each point's
    preceding and following point (a ring's first point follows its last)."""
    starts = np.cumsum(sizes) - sizes
    index = np.arange(int(sizes.sum()))
    first, last = np.repeat(starts, sizes), np.repeat(starts + sizes - 1, sizes)
    return starts, np.where(index == first, last, index - 1), np.where(index == last, first, index + 1)


def _keep(points: np.ndarray, sizes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.cumsum(sizes) - sizes
    return points[keep], np.add.reduceat(keep.astype(np.int64), starts)


def corner_rings(points: np.ndarray, sizes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Rings ((N, 2) `points`, ring k the next sizes[k]; not closed) -> the same rings without
    repeated points and without the points on a straight line between their neighbours (the same
    polygons), closed, and each ring's signed area (shoelace formula)."""
    _, preceding, _ = _neighbours(sizes)
    points, sizes = _keep(points, sizes, np.any(points != points[preceding], axis=1))
    starts, preceding, following = _neighbours(sizes)
    before, after = points - points[preceding], points[following] - points
    points, sizes = _keep(points, sizes, before[:, 0] * after[:, 1] != before[:, 1] * after[:, 0])
    starts, _, following = _neighbours(sizes)
    x, y = points[:, 0], points[:, 1]
    areas = 0.5 * (np.add.reduceat(x * y[following], starts) - np.add.reduceat(y * x[following], starts))
    return [np.vstack([ring, ring[:1]]) for ring in np.split(points, np.cumsum(sizes)[:-1])], areas


def mask_polygons(mask: np.ndarray, downsample: float, dimensions: tuple[float, float] | None = None,
                  offset: tuple[int, int] = (0, 0)) -> list[list[np.ndarray]]:
    """The regions of a bool (H, W) map mask as polygons ([exterior, *holes], closed (K, 2) x, y
    rings in level-0 px; map pixel (r, c) has its centre at ((c + 1/2)·D, (r + 1/2)·D)), corners
    only, exteriors counter-clockwise (positive signed area on x, y), holes clockwise. The
    outline is marching squares' at level 1/2 around the 1-pixels (8-connected; scikit-image's
    find_contours, fully_connected="high"): it joins the midpoints of the pixel sides between a
    1 and a 0, so a pixel-centre rasterisation gives the mask back. Found from OpenCV's border
    following (tens of times faster): each border pixel adds its sides that face the outside
    (OUTSIDE_SIDES). With `dimensions` (W, H), points are moved into the slide's [0, W] x [0, H]:
    a map pixel's outline may pass its edge by < D/2 px, where no pixel centred inside lies.
    `offset` (row, col): the map pixel of the mask's first (a part of the map)."""
    contours, hierarchy = cv2.findContours(np.pad(np.asarray(mask, np.uint8), 1), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    pixels = np.concatenate(contours)[:, 0, :].astype(np.int64) - 1 + offset[::-1]  # padded -> (x, y) map px
    lengths = np.array([len(c) for c in contours])
    starts, preceding, following = _neighbours(lengths)
    back, ahead = pixels[preceding] - pixels, pixels[following] - pixels
    sides = OUTSIDE_SIDES[STEP_CODE[back[:, 1] + 1, back[:, 0] + 1], STEP_CODE[ahead[:, 1] + 1, ahead[:, 0] + 1]]
    outside = sides >= 0
    per_pixel = outside.sum(axis=1)
    midpoints = (np.repeat(pixels + 0.5, per_pixel, axis=0) + 0.5 * STEPS[sides[outside]]) * downsample
    if dimensions is not None:
        midpoints = np.clip(midpoints, 0, np.asarray(dimensions, np.float64))
    rings, areas = corner_rings(midpoints, np.add.reduceat(per_pixel, starts))
    parents = hierarchy[0, :, 3]
    polygons: dict[int, list[np.ndarray]] = {i: [] for i in np.flatnonzero(parents < 0).tolist()}
    for i, (ring, area) in enumerate(zip(rings, areas, strict=True)):
        hole = parents[i] >= 0
        polygons[int(parents[i]) if hole else i].append(ring[::-1] if (area > 0) == hole else ring)
    return [polygons[i] for i in sorted(polygons)]


def _multipolygon(mask: np.ndarray, maps: Maps, offset: tuple[int, int] = (0, 0)) -> dict[str, Any] | None:
    """A bool map mask (from map pixel `offset` (row, col)) as a MultiPolygon in level-0 px inside
    the slide (rounded to 0.1 px, all points at once), None when empty."""
    dimensions = (float(maps.attrs["dimensions"][0]), float(maps.attrs["dimensions"][1]))
    polygons = mask_polygons(mask, maps.downsample, dimensions, offset)
    if not polygons:
        return None
    points = iter(np.round(np.concatenate([r for rings in polygons for r in rings]), 1).tolist())
    coordinates = [[list(itertools.islice(points, len(r))) for r in rings] for rings in polygons]
    return {"type": "MultiPolygon", "coordinates": coordinates}


def lesion_features(maps: Maps) -> list[dict[str, Any]]:
    """Each lesion of `maps`' lesion label (k on the k-th) as an "Audited lesion" annotation."""
    labels, names = maps.lesion, list(maps.attrs.get("lesion_names", []))
    colour = _rgb(LABEL_RGBA[LESION])
    features = []
    for k, name in enumerate(names, start=1):
        mask = labels == k
        geometry = _multipolygon(mask, maps)
        if geometry:
            features.append(_feature(geometry, name or f"lesion {k}", AUDITED_LESION, colour,
                                     {"area_um2": float(mask.sum()) * maps.pixel_um ** 2}))
    return features


def focus_features(audit: dict[str, Any], maps: Maps, footprint: float) -> list[dict[str, Any]]:
    """The peaks, top patches (squares of `footprint` level-0 px) and top regions of `audit`'s
    methods on `maps`, and its audited lesions, as GeoJSON Features (module docstring)."""
    methods = list(audit["methods"])
    features = []
    for rank, patch in enumerate(audit["top_patches"], start=1):
        x, y = patch["x"], patch["y"]
        square = [[x, y], [x + footprint, y], [x + footprint, y + footprint], [x, y + footprint], [x, y]]
        features.append(_feature({"type": "Polygon", "coordinates": [square]},
                                 f"top patch {rank}", TOP_PATCH, TOP_PATCH_RGB,
                                 {"attention": patch["attention"]}))
    box = maps.tissue_box  # the top regions lie on tissue
    tissue = maps.tissue[box]
    for method in methods:
        colour, title = method_colour(methods, method), method_title(method)
        for rank, peak in enumerate(audit["peaks"].get(method, []), start=1):
            features.append(_feature({"type": "Point", "coordinates": [peak["x"], peak["y"]]},
                                     f"{title} peak {rank}", PEAK.format(title), colour,
                                     {"value": peak["value"]}))
        values = maps[method][box]
        region = top_k_mask(values, tissue & np.isfinite(values), TOP_FRACTION)
        if region is None:   # ties fill the whole top share (e.g. a flat map): no top region
            continue
        geometry = _multipolygon(region, maps, (box[0].start, box[1].start))
        if geometry:
            features.append(_feature(geometry, f"{title} top {TOP_FRACTION:.0%}",
                                     TOP_REGION.format(TOP_FRACTION, title), colour,
                                     {"area_um2": float(region.sum()) * maps.pixel_um ** 2}))
    return features + lesion_features(maps)


def lesion_shares(maps: Maps, coords: np.ndarray, footprint: float) -> np.ndarray:
    """(N,) float64: per patch, the fraction of the map pixels whose centres lie in its footprint
    (those it is stitched onto, `tiling.stitch.PatchGrid`) that are on a lesion; NaN for a patch
    covering no map pixel. One summed-area table serves every patch."""
    lesion = maps.lesion > 0
    grid = PatchGrid(coords, footprint, maps.downsample, lesion.shape)
    table = cv2.integral(lesion.view(np.uint8), sdepth=cv2.CV_64F)  # (H + 1, W + 1), a zero row and column first
    inside = table[grid.r1, grid.c1] - table[grid.r0, grid.c1] - table[grid.r1, grid.c0] + table[grid.r0, grid.c0]
    area = (grid.r1 - grid.r0) * (grid.c1 - grid.c0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, inside / area, np.nan)


def patch_means(maps: Any, block: int = 256) -> np.ndarray:
    """(N,) float64: the mean of each patch's (h, w) values of an (N, h, w) zarr array, read
    `block` patches at a time (a method at the model's input size is ~200 kB a patch)."""
    return np.concatenate([np.asarray(maps[i:i + block], np.float64).mean(axis=(1, 2))
                           for i in range(0, maps.shape[0], block)] or [np.zeros(0)])


def tile_measurements(store: PatchStore, explain: Any, maps: Maps) -> dict[str, np.ndarray]:
    """{measurement name: (N,) values} of every patch (module docstring)."""
    attention = np.asarray(explain["attention"][:], np.float64)
    values = {ATTENTION: attention, ATTENTION_RANK: percentile_rank(attention)}
    for method in explain.attrs.get("methods", []):
        values[METHOD_MEAN.format(method_title(method))] = patch_means(explain[method])
    for kind, name in ARTEFACT_KINDS.items():
        values[ARTEFACT_SHARE.format(name)] = store.artefacts.shares[:, kind - 1]
    values[LESION_SHARE] = lesion_shares(maps, store.coords, float(store.attrs["footprint"]))
    values[TISSUE_SHARE] = store.tissue
    return values


def tile_features(store: PatchStore, explain: Any, maps: Maps) -> list[dict[str, Any]]:
    """One QuPath ``tile`` detection per patch of `store`: its footprint square clipped to the
    slide, its measurements (`tile_measurements`) and class (module docstring)."""
    width, height = (float(v) for v in store.attrs["dimensions"])
    footprint = float(store.attrs["footprint"])
    values = tile_measurements(store, explain, maps)
    names, columns = list(values), np.stack([np.asarray(v, np.float64) for v in values.values()], axis=1)
    kinds, lesion = store.artefacts.kind, values[LESION_SHARE]
    artefact_rgb, lesion_rgb, tissue_rgb = (_rgb(LABEL_RGBA[n]) for n in (ARTEFACTS, LESION, TISSUE))
    features = []
    for n, (x, y) in enumerate(store.coords.tolist()):
        x1, y1 = min(x + footprint, width), min(y + footprint, height)
        square = [[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]  # counter-clockwise on x, y
        if kinds[n]:
            cls, colour = TILE_CLASS.format(ARTEFACT_KINDS[int(kinds[n])]), artefact_rgb
        elif lesion[n] >= LESION_TILE:
            cls, colour = TILE_CLASS.format("lesion"), lesion_rgb
        else:
            cls, colour = TILE_CLASS.format("tissue"), tissue_rgb
        features.append(_feature({"type": "Polygon", "coordinates": [square]}, f"patch {n}", cls,
                                 colour, dict(zip(names, columns[n].tolist(), strict=True)), "tile"))
    return features


def _write_collection(path: Path, features: list[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False),
                       encoding="utf-8")
    return path


def write_qupath_geojson(slide_dir: Path, audit: dict[str, Any], maps: Maps) -> tuple[Path, Path]:
    """Write ``slide_dir/focus.geojson`` and ``slide_dir/tiles.geojson`` (each atomic) for
    `audit`, the slide's maps and its patch and explain stores; returns their paths."""
    slide_dir = Path(slide_dir)
    store = open_patch_store(slide_dir)
    explain = open_explain_store(slide_dir / EXPLAIN, store)
    focus = focus_features(audit, maps, float(store.attrs["footprint"]))
    return (_write_collection(slide_dir / FOCUS_GEOJSON, focus),
            _write_collection(slide_dir / TILES_GEOJSON, tile_features(store, explain, maps)))
