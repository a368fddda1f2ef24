"""The lesion polygons inside maps.zarr (`lesions.geojson`, written by stitch with the maps).

A GeoJSON FeatureCollection in level-0 slide px (x right, y down), the k-th feature being label k
of the maps' lesion image: a Polygon whose first ring is the lesion's exterior and the others its
holes (its own and the exclusions subtracted from it), coordinates rounded to 0.1 px;
properties: name and class. The viewer draws these as vector outlines.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import StoreError
from tiling.store.names import LESION_POLYGONS, MAPS, stage_path


def lesion_features(lesions: Sequence[tuple[str, str, Sequence[np.ndarray]]]) -> dict[str, Any]:
    """The FeatureCollection of (name, class, rings) lesions; rings: (K, 2) x, y arrays, exterior first."""
    def ring(points: np.ndarray) -> list[list[float]]:
        closed = np.vstack([points, points[:1]]) if not np.array_equal(points[0], points[-1]) else points
        return np.round(np.asarray(closed, np.float64), 1).tolist()

    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(r) for r in rings]},
         "properties": {"name": name, "class": group}} for name, group, rings in lesions]}


def write_lesion_polygons(store: Path, lesions: Sequence[tuple[str, str, Sequence[np.ndarray]]]) -> Path:
    """Write `lesion_features(lesions)` into the maps store being written at `store`."""
    path = Path(store) / LESION_POLYGONS
    path.write_text(json.dumps(lesion_features(lesions), separators=(",", ":")))
    return path


def lesion_polygons_path(slide_dir: Path) -> Path:
    """The lesion polygons file of a slide folder or of its maps.zarr; StoreError when missing."""
    path = stage_path(slide_dir, MAPS) / LESION_POLYGONS
    if not path.is_file():
        raise StoreError(f"{path.parent.name}: no {LESION_POLYGONS}; rerun the stitch stage on this slide")
    return path


def load_lesion_polygons(slide_dir: Path) -> dict[str, Any]:
    """The FeatureCollection of a slide folder's (or maps.zarr's) lesion polygons."""
    return dict(json.loads(lesion_polygons_path(slide_dir).read_text()))
