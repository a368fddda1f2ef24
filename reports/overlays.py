"""The deep-zoom viewer of one audited slide: its page and its colour-mapped overlay tiles.

Layers come from maps.zarr: each heat map (attention, attention_rank, each CAM method) coloured
on its percentile scale (`figures.percentile_scale` over the map's finite values: colour at p
shows the value q_p; off-tissue NaN is transparent; opacity 0.35 + 0.65·v so low values only
tint), and the artefact mask when the store has one. The lesion outlines are vector polygons
(`tiling.store.lesions`); the page is `reports.viewer_page`.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from explainers.methods.registry import title as method_title
from reports import figures as F
from tiling.deepzoom import DeepZoomGrid, SlideTiles, map_tile
from tiling.errors import StoreError
from tiling.store import AUDIT, EXPLAIN, PATCHES
from tiling.store.maps import ARTEFACTS, ATTENTION_RANK, LABEL_RGBA, LESION, Maps, open_maps
from tiling.store.ome import Level
from tiling.store.patches import open_patch_store
from tiling.store.records import load_audit

ARTEFACT_RGBA = (*LABEL_RGBA[ARTEFACTS][:3], 110)  # the stored label colour, translucent over the slide
LEGEND_PERCENTS = (0, 50, 90, 100)
TITLES = {ATTENTION_RANK: "Attention rank", LESION: "Lesion outline", ARTEFACTS: "Artefact mask"}  # not methods


def png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 4) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def heat_rgba(v01: np.ndarray) -> np.ndarray:
    """(h, w) display values in [0, 1] (NaN off tissue) -> RGBA uint8: the colour scale at
    opacity 0.35 + 0.65·v, transparent where NaN."""
    alpha = np.where(np.isnan(v01), 0.0, 0.35 + 0.65 * np.nan_to_num(v01))
    rgba = np.concatenate([F.colourise(v01), alpha[..., None]], axis=-1)
    return np.rint(rgba * 255).astype(np.uint8)


def mask_rgba(labels: np.ndarray) -> np.ndarray:
    """(h, w) labels -> RGBA uint8: ARTEFACT_RGBA where > 0, transparent elsewhere."""
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    rgba[labels > 0] = ARTEFACT_RGBA
    return rgba


def title(name: str) -> str:
    """The display title of a layer: the method registry's, else TITLES'."""
    return TITLES[name] if name in TITLES else method_title(name)


class SlideView:
    """One slide folder (OUT/slides/<id>) opened for the viewer: the slide's deep-zoom tiles,
    the maps' levels and display scales, and the page. StoreError/SlideError when it cannot be."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        patches = open_patch_store(folder / PATCHES).attrs
        self.slide_id, self.mpp = str(patches["slide_id"]), float(patches["slide_mpp"])
        self.footprint = float(patches.get("footprint") or 0)
        self.maps: Maps = open_maps(folder)
        self.audit = load_audit(folder / AUDIT) if (folder / AUDIT).is_file() else None
        self.tiles = SlideTiles(Path(patches["source_path"]))
        width, height = (int(v) for v in self.maps.attrs["dimensions"])
        if (width, height) != (self.tiles.grid.width, self.tiles.grid.height):
            raise StoreError(f"{folder}: maps.zarr is for a {width} x {height} px slide but "
                             f"{patches['source_path']} is {self.tiles.grid.width} x {self.tiles.grid.height}; "
                             "rerun the audit on this slide")
        self.grid: DeepZoomGrid = self.tiles.grid
        masks = [ARTEFACTS] if ARTEFACTS in self.maps else []
        self.layers = {**dict.fromkeys(self.maps.heatmaps, "heat"), **dict.fromkeys(masks, "label")}
        self._levels: dict[str, list[Level]] = {}
        self._scales: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self._cells: dict[str, float] = {}

    def levels(self, name: str) -> list[Level]:
        if name not in self._levels:
            self._levels[name] = self.maps.pyramid(name)
        return self._levels[name]

    def scale(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        if name not in self._scales:
            self._scales[name] = F.percentile_scale(self.maps[name])
        return self._scales[name]

    def cell_px(self, name: str) -> float:
        """The side (level-0 px) of heat map `name`'s cells: the patch footprint over the map's
        columns per patch in explain.zarr (1 for attention, or when explain.zarr was removed)."""
        explain = self.folder / EXPLAIN
        values = zarr.open_group(explain, mode="r")[name] if name in self.maps.methods and explain.is_dir() else None
        return self.footprint / (values.shape[-1] if values is not None and values.ndim == 3 else 1)

    def overlay_tile(self, name: str, level: int, col: int, row: int, smooth: bool = False) -> bytes | None:
        """PNG of layer `name` on tile (col, row) of `level` (a heat map interpolated between its
        cells with `smooth`, `tiling.deepzoom.map_tile`); None for an unknown layer or tile."""
        if name not in self.layers:
            return None
        if smooth and name not in self._cells and self.layers[name] == "heat":
            self._cells[name] = self.cell_px(name)
        values = map_tile(self.levels(name), self.grid, level, col, row, self._cells.get(name, 0.0) if smooth else 0.0)
        if values is None:
            return None
        if name == ARTEFACTS:
            return png(mask_rgba(values))
        return png(heat_rgba(self.scale(name)(values)))

    def legend(self, name: str) -> list[dict[str, float]]:
        """Ticks of a heat map's colour scale: percent p and the map value q_p at it."""
        values = self.maps[name]
        values = values[np.isfinite(values)]
        if values.size == 0:
            return []
        return [{"percent": p, "value": float(np.percentile(values, p))} for p in LEGEND_PERCENTS]

    def close(self) -> None:
        self.tiles.close()
