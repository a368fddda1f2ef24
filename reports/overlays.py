"""The deep-zoom viewer of one audited slide: its page and its colour-mapped overlay tiles.

Layers come from maps.zarr: each heat map (attention, attention_rank, each CAM method) coloured
on its percentile scale (`figures.percentile_scale` over the map's finite values: colour at p
shows the value q_p; off-tissue NaN is transparent; opacity 0.35 + 0.65·v so low values only
tint), the lesion outline (white outside, black inside, visible on any stain), and the artefact
mask when the store has one. Markers: each map's peaks and the top attended patches of audit.json.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explainers.methods.registry import title as method_title
from reports import figures as F
from reports.html import environment
from tiling.deepzoom import DeepZoomGrid, SlideTiles, map_tile
from tiling.errors import StoreError
from tiling.store import AUDIT, PATCHES
from tiling.store.maps import ARTEFACTS, ATTENTION, ATTENTION_RANK, LABEL_RGBA, LESION, Maps, open_maps
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


def outline_rgba(labels: np.ndarray) -> np.ndarray:
    """(h, w) lesion labels -> RGBA uint8 of a double outline: white on each lesion's edge px,
    black on the px just inside."""
    lesion = labels > 0
    outer = F.contour(lesion)
    inner = F.contour(lesion & ~outer)
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    rgba[outer] = (255, 255, 255, 255)
    rgba[inner] = (0, 0, 0, 255)
    return rgba


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
        outlines = [LESION] + ([ARTEFACTS] if ARTEFACTS in self.maps else [])
        self.layers = {**dict.fromkeys(self.maps.heatmaps, "heat"), **dict.fromkeys(outlines, "label")}
        self._levels: dict[str, list[Level]] = {}
        self._scales: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def levels(self, name: str) -> list[Level]:
        if name not in self._levels:
            self._levels[name] = self.maps.pyramid(name)
        return self._levels[name]

    def scale(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        if name not in self._scales:
            self._scales[name] = F.percentile_scale(self.maps[name])
        return self._scales[name]

    def overlay_tile(self, name: str, level: int, col: int, row: int) -> bytes | None:
        """PNG of layer `name` on tile (col, row) of `level`; None for an unknown layer or tile."""
        if name not in self.layers:
            return None
        values = map_tile(self.levels(name), self.grid, level, col, row)
        if values is None:
            return None
        if name == LESION:
            return png(outline_rgba(values))
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

    def markers(self) -> list[dict[str, Any]]:
        """Peaks of each map and the top attended patches (level-0 px boxes) from audit.json."""
        if self.audit is None:
            return []
        side = self.footprint or self.maps.downsample
        found = [{"label": f"{title(name)} peak {i + 1}", "kind": "peak", "layer": name,
                  "x": p["x"] - side / 2, "y": p["y"] - side / 2, "w": side, "h": side}
                 for name, peaks in self.audit.get("peaks", {}).items() for i, p in enumerate(peaks)]
        return found + [{"label": f"Top patch {i + 1} (attention {p['attention']:.3f})", "kind": "patch",
                         "layer": ATTENTION, "x": p["x"], "y": p["y"], "w": side, "h": side}
                        for i, p in enumerate(self.audit.get("top_patches", []))]

    def page(self, static: str) -> str:
        """The viewer page; `static`: URL of the package's static folder."""
        heat = [n for n, kind in self.layers.items() if kind == "heat"]
        config = {
            "slide": {"url": "slide_files/", "width": self.grid.width, "height": self.grid.height,
                      "tileSize": self.grid.tile_size, "overlap": self.grid.overlap, "mpp": self.mpp},
            "layers": [{"name": n, "title": title(n), "kind": k, "url": f"layers/{n}_files/"}
                       for n, k in self.layers.items()],
            "legend": {n: self.legend(n) for n in heat},
            "markers": self.markers(),
            "left": ATTENTION, "right": self.maps.methods[0] if self.maps.methods else ATTENTION_RANK,
            "static": static,
        }
        return environment().get_template("viewer.html").render(
            slide_id=self.slide_id, static=static, verdict=(self.audit or {}).get("verdict"),
            heat=[(n, title(n)) for n in heat], labels=[(n, title(n)) for n, k in self.layers.items() if k == "label"],
            config=json.dumps(config))

    def close(self) -> None:
        self.tiles.close()
