"""Stitching: patch values back onto one slide-level canvas (the inverse of the patch grid).

Map pixel (r, c) covers level-0 rows [r·D, (r+1)·D) and columns [c·D, (c+1)·D), D being the
downsample (level-0 px per map px). A patch with top-left (x, y) and side F (level-0 px) covers
the map pixels whose centres lie inside it: rows ceil(y/D - 1/2) <= r < ceil((y+F)/D - 1/2),
columns likewise. A patch's (h, w) values are resampled onto those pixels by bilinear
interpolation between cell centres (h = w = 1 gives a constant); overlapping patches are
averaged, map = Σ patch values / Σ coverage, and pixels that no patch covers are NaN.

`stitch_slide` writes maps.zarr (layout: tiling.store.maps) from patches.zarr (whose thumbnail
it resamples: the slide itself is not reopened), explain.zarr and the annotation files.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image
from scipy.stats import rankdata

from tiling.annotation_fit import annotation_downsample, check_fit, scaled
from tiling.annotations import ROLES, Lesion, LesionRules, rasterize_lesions, read_classified
from tiling.artefacts import ARTEFACT_KINDS
from tiling.config import StitchConfig
from tiling.errors import StoreError
from tiling.store import EXPLAIN, MAPS, atomic_path, chained_stamp, file_sha256, is_current, open_patch_store
from tiling.store.explain import open_explain_store
from tiling.store.lesions import write_lesion_polygons
from tiling.store.maps import ARTEFACTS, ATTENTION, ATTENTION_RANK, LESION, THUMBNAIL, TISSUE, MapsWriter

log = logging.getLogger(__name__)


def lesion_rules(config: StitchConfig) -> LesionRules:
    """The annotation classes `config` makes lesions and exclusions, and its vertex limit."""
    return LesionRules(config.lesion_classes or None, config.exclude_classes, config.max_vertices)


def map_downsample(dimensions: tuple[int, int], config: StitchConfig, footprint: float = 0.0) -> float:
    """D = config.downsample, else the smallest integer >= 1 with max(W, H) / D <= max_side and
    D >= floor(footprint / patch_px), `footprint` being the patch side in level-0 px."""
    if config.downsample is not None:
        return float(config.downsample)
    return float(max(1, math.ceil(max(dimensions) / config.max_side), math.floor(footprint / config.patch_px)))


def map_shape(dimensions: tuple[int, int], downsample: float) -> tuple[int, int]:
    """(H, W) of the maps for a level-0 slide of (W, H): ceil(side / D)."""
    width, height = dimensions
    return math.ceil(height / downsample), math.ceil(width / downsample)


def spans(starts: np.ndarray, footprint: float, downsample: float,
          size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last map pixel whose centre lies in [start, start + footprint)."""
    lo = np.ceil(np.asarray(starts, np.float64) / downsample - 0.5).astype(np.int64)
    hi = np.ceil((np.asarray(starts, np.float64) + footprint) / downsample - 0.5).astype(np.int64)
    return np.clip(lo, 0, size), np.clip(hi, 0, size)


def _interpolation(starts: np.ndarray, lo: np.ndarray, length: int, footprint: float,
                   downsample: float, cells: int) -> np.ndarray:
    """(N, length, cells) bilinear weights: map pixel lo+j of patch n from its `cells` values.

    Pixel centre p = (lo + j + 1/2)·D in level-0 px sits at u = (p - start)/F·cells - 1/2 in
    cell-centre units (clamped to [0, cells-1]); weights 1-frac(u) and frac(u) go to its two cells.
    """
    pixel = (lo[:, None] + np.arange(length)[None, :] + 0.5) * downsample
    u = np.clip((pixel - starts[:, None]) / footprint * cells - 0.5, 0, cells - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, cells - 1)
    frac = (u - i0).astype(np.float32)
    weights = np.zeros((*u.shape, cells), np.float32)
    n, j = np.indices(u.shape)
    weights[n, j, i0] = 1 - frac
    weights[n, j, i1] += frac
    return weights


@dataclass
class PatchGrid:
    """Where each patch lands on the map: rows [r0, r1) and columns [c0, c1) per patch."""

    coords: np.ndarray
    footprint: float
    downsample: float
    shape: tuple[int, int]
    block_pixels: int = 1 << 24

    def __post_init__(self) -> None:
        x, y = self.coords[:, 0], self.coords[:, 1]
        self.r0, self.r1 = spans(y, self.footprint, self.downsample, self.shape[0])
        self.c0, self.c1 = spans(x, self.footprint, self.downsample, self.shape[1])

    def accumulate(self, values: Any, out: np.ndarray) -> np.ndarray:
        """Add each patch's (h, w) values, resampled onto its footprint, into `out` (H, W).

        `values` is (N, h, w), a numpy or zarr array read block by block.
        """
        n, h, w = values.shape
        rows = max(1, int((self.r1 - self.r0).max(initial=0)))
        cols = max(1, int((self.c1 - self.c0).max(initial=0)))
        block = max(1, self.block_pixels // (rows * cols))
        ys, xs = self.coords[:, 1].astype(np.float64), self.coords[:, 0].astype(np.float64)
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            patch = np.asarray(values[sl], np.float32)
            wr = _interpolation(ys[sl], self.r0[sl], rows, self.footprint, self.downsample, h)
            wc = _interpolation(xs[sl], self.c0[sl], cols, self.footprint, self.downsample, w)
            resampled = wr @ patch @ wc.transpose(0, 2, 1)
            bounds = (a[sl].tolist() for a in (self.r0, self.r1, self.c0, self.c1))
            for k, (r0, r1, c0, c1) in enumerate(zip(*bounds, strict=True)):  # per patch
                out[r0:r1, c0:c1] += resampled[k, : r1 - r0, : c1 - c0]
        return out

    def coverage(self) -> np.ndarray:
        """(H, W) float32 count of patches covering each map pixel (the averaging weights)."""
        ones = np.ones((len(self.coords), 1, 1), np.float32)
        return self.accumulate(ones, np.zeros(self.shape, np.float32))

    def stitch(self, values: Any, coverage: np.ndarray) -> np.ndarray:
        """(H, W) float32 map: overlap-averaged patch values, NaN where no patch lies."""
        total = self.accumulate(values, np.zeros(self.shape, np.float32))
        return np.divide(total, coverage, out=np.full(self.shape, np.nan, np.float32), where=coverage > 0)


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """(rank - 1) / (N - 1) with ties averaged: 0 for the lowest value, 1 for the highest."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return np.ones_like(values, np.float32)
    return ((rankdata(values) - 1) / (values.size - 1)).astype(np.float32)


@dataclass(frozen=True)
class AnnotationScale:
    """What the manifest declares about a slide's annotation coordinates (None = not given):
    downsample (annotation px per slide level-0 px) or mpp (µm per annotation px)."""

    downsample: float | None = None
    mpp: float | None = None


def slide_lesions(annotations: list[Path], dimensions: tuple[int, int], slide_mpp: float,
                  scale: AnnotationScale, rules: LesionRules | None = None) -> tuple[list[Lesion], dict[str, Any]]:
    """The lesions of the annotation files in slide level-0 px, each file scaled
    (`tiling.annotation_fit`) and checked to fit the slide of `dimensions` (W, H), a lesion found
    in several files counted once (`geometry_key`); and how they were read:
    {"annotation_downsample": {file name: factor}, "annotation_scale_source": {file name: source},
    "duplicate_lesions": lesions dropped as copies of an earlier file's, "annotation_classes":
    {"lesion"/"exclusion"/"ignored": the classes found in that role under `rules` (None: the
    defaults)}}."""
    lesions, factors, sources, seen, duplicates = [], {}, {}, set(), 0
    classes: dict[str, set[str]] = {role: set() for role in ROLES}
    for path in annotations:
        factor, source = annotation_downsample(path, slide_mpp, scale.downsample, scale.mpp)
        read, roles = read_classified(path, rules or LesionRules())
        found = scaled(read, factor)
        for role, names in roles.items():
            classes[role].update(names)
        if found:
            check_fit(path, found, dimensions, factor)
        for lesion in found:
            key = geometry_key(lesion)
            duplicates += key in seen
            if key not in seen:
                seen.add(key)
                lesions.append(lesion)
        factors[path.name], sources[path.name] = factor, source
    return lesions, {"annotation_downsample": factors, "annotation_scale_source": sources,
                     "duplicate_lesions": duplicates,
                     "annotation_classes": {role: sorted(names) for role, names in classes.items()}}


def geometry_key(lesion: Lesion) -> bytes:
    """The sorted distinct exterior vertices rounded to 0.1 level-0 px, as bytes: the same polygon
    in GeoJSON (closed ring) and ASAP XML (open ring, any start) gives the same key. Each vertex
    is packed into one int64 (x * 2^32 + y, in 0.1 px), so the sort is one 1-D sort."""
    tenths = np.round(lesion.exterior * 10).astype(np.int64)
    return np.unique(tenths[:, 0] * (1 << 32) + tenths[:, 1]).tobytes()


def lesion_labels(lesions: list[Lesion], shape: tuple[int, int],
                  downsample: float) -> tuple[np.ndarray, list[str]]:
    """(H, W) uint16: k on the k-th lesion (1-based), and their names."""
    labels = np.zeros(shape, np.uint16)
    for k, lesion in enumerate(lesions, start=1):
        labels[rasterize_lesions([lesion], shape, downsample)] = k
    return labels, [str(lesion.name) for lesion in lesions]


def _thumbnail(thumbnail: zarr.Array, shape: tuple[int, int]) -> np.ndarray:
    """(3, H, W) uint8: the patch store's (h, w, 3) RGB thumbnail resampled to the map grid
    (Pillow's bilinear filter, widened when shrinking so that it averages: antialiased)."""
    image = Image.fromarray(np.ascontiguousarray(thumbnail[...], np.uint8))
    return np.moveaxis(np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)), -1, 0)


def _labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: the patch store's (h, w) label mask resampled to the map grid (nearest)."""
    image = Image.fromarray(np.ascontiguousarray(labels, np.uint8))
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def stitch_slide(slide_dir: Path, annotations: list[Path], config: StitchConfig,
                 scale: AnnotationScale = AnnotationScale()) -> Path:
    """Write ``slide_dir/maps.zarr`` from patches.zarr (its thumbnail too), explain.zarr and the
    annotations (read-only, scaled by `scale` and checked to fit the slide before anything is
    written: AnnotationError otherwise); skipped when its stamp is current. Returns the maps.zarr
    path. The slide itself is not opened: its thumbnail comes from patches.zarr."""
    slide_dir, annotations = Path(slide_dir), [Path(a) for a in annotations]
    out = slide_dir / MAPS
    stamp = chained_stamp(config, slide_dir / EXPLAIN,
                          annotations_sha=[file_sha256(a) for a in annotations],
                          annotation_scale=[scale.downsample, scale.mpp])
    if is_current(out, **stamp):
        log.info("%s is current; skipping stitch", out)
        return out
    store = open_patch_store(slide_dir)
    explain = open_explain_store(slide_dir / EXPLAIN, store)
    attrs = store.attrs
    dimensions = (int(attrs["dimensions"][0]), int(attrs["dimensions"][1]))
    downsample = map_downsample(dimensions, config, float(attrs["footprint"]))
    shape = map_shape(dimensions, downsample)
    if attrs.get("slide_mpp") is None:
        raise StoreError(f"{store.path}: attrs lack slide_mpp; retile the slide with --slide-mpp")
    pixel_um = downsample * float(attrs["slide_mpp"])
    lesions, scaling = slide_lesions(annotations, dimensions, float(attrs["slide_mpp"]), scale,
                                     lesion_rules(config))
    grid = PatchGrid(store.coords, float(attrs["footprint"]), downsample, shape,
                     config.block_pixels)
    methods = [str(m) for m in explain.attrs.get("methods", [])]
    attention = np.asarray(explain["attention"][:], np.float32)
    sources = {ATTENTION: attention[:, None, None],
               ATTENTION_RANK: percentile_rank(attention)[:, None, None],
               **{m: explain[m] for m in methods}}
    with atomic_path(out) as tmp, MapsWriter(tmp, pixel_um, config.chunk) as writer:
        coverage = grid.coverage()
        writer.image(TISSUE, (coverage > 0).astype(np.uint8), "1 where a tissue patch covers the pixel")
        for name, values in sources.items():
            writer.image(name, functools.partial(grid.stitch, values, coverage),
                         "patch values averaged over overlapping patches; NaN off tissue")
        labels, names = lesion_labels(lesions, shape, downsample)
        writer.image(LESION, labels, "k on the k-th annotated lesion")
        write_lesion_polygons(tmp, [(str(lz.name), lz.group, [lz.exterior, *lz.holes]) for lz in lesions])
        writer.image(ARTEFACTS, _labels(store.artefacts.labels, shape),
                     "artefact labels: " + ", ".join(f"{k} {n}" for k, n in ARTEFACT_KINDS.items()))
        writer.image(THUMBNAIL, _thumbnail(store.thumbnail, shape), "slide RGB resampled to the map grid")
        writer.finish({
            "slide_id": attrs.get("slide_id"), "dimensions": list(dimensions),
            "downsample": downsample, "pixel_um": pixel_um, "shape": list(shape),
            "methods": methods, "heatmaps": list(sources), "lesion_names": names,
            "artefact_kinds": {str(k): n for k, n in ARTEFACT_KINDS.items()}, **scaling, **stamp})
    log.info("stitched %s: %d maps of %d x %d px at %.3g µm/px", out, len(sources), shape[1],
             shape[0], pixel_um)
    return out

