"""maps.zarr/lesions.geojson: the lesion polygons stitch keeps for the viewer's vector outlines."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tiling.errors import StoreError
from tiling.store.lesions import lesion_features, load_lesion_polygons, write_lesion_polygons


def test_rings_are_closed_rounded_and_keep_their_holes(tmp_path) -> None:
    exterior = np.array([[0.0, 0.0], [100.04, 0.0], [100.04, 80.0], [0.0, 80.0]])
    hole = np.array([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 10.0]])          # already closed
    store = tmp_path / "maps.zarr"
    store.mkdir()
    write_lesion_polygons(store, [("Tumor 1", "Tumor", [exterior, hole]), ("", "", [exterior + 500])])
    doc = load_lesion_polygons(tmp_path)
    assert doc == json.loads(json.dumps(lesion_features([("Tumor 1", "Tumor", [exterior, hole]),
                                                         ("", "", [exterior + 500])])))
    first, second = doc["features"]
    outer, inner = first["geometry"]["coordinates"]
    assert outer == [[0.0, 0.0], [100.0, 0.0], [100.0, 80.0], [0.0, 80.0], [0.0, 0.0]]   # closed, 0.1 px
    assert inner == hole.tolist()                                                       # not closed twice
    assert first["properties"] == {"name": "Tumor 1", "class": "Tumor"}
    assert second["geometry"]["coordinates"][0][0] == [500.0, 500.0]


def test_a_store_without_the_file_asks_to_stitch_again(tmp_path) -> None:
    (tmp_path / "maps.zarr").mkdir()
    with pytest.raises(StoreError, match="rerun the stitch stage"):
        load_lesion_polygons(tmp_path)
