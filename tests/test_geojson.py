"""focus.geojson: peaks, top patches and top-10 % regions for QuPath, read back by our own
annotation reader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from explainers.methods.registry import title as method_title
from reports.audit.metrics import top_k_mask
from reports.geojson import TOP_FRACTION, mask_polygons
from tiling.annotations import Lesion, LesionRules, rasterize_lesions, read_classified
from tiling.store import FOCUS_GEOJSON, open_patch_store
from tiling.store.maps import open_maps
from tiling.store.records import load_audit


def test_mask_polygons_trace_regions_with_holes_exactly() -> None:
    mask = np.zeros((9, 12), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # a hole
    mask[4, 4] = True       # an island inside the hole
    mask[0, 10:12] = True   # a second region on the edge
    polygons = mask_polygons(mask, 4.0)
    assert sorted(len(p) for p in polygons) == [1, 1, 2]
    lesions = [Lesion(np.array(p[0]), [np.array(h) for h in p[1:]]) for p in polygons]
    np.testing.assert_array_equal(rasterize_lesions(lesions, mask.shape, 4.0), mask)
    (outer, hole) = next(p for p in polygons if len(p) == 2)
    assert outer[:, 0].min() == 4.0  # half-way between the centres of columns 0 (x 2) and 1 (x 6)
    assert hole[:, 0].min() == 12.0  # between columns 2 (x 10) and 3 (x 14)
    assert mask_polygons(np.zeros((3, 3), bool), 1.0) == []


def test_rings_keep_only_their_corners() -> None:
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:8] = True  # 3 x 5 px: marching squares cuts each corner pixel diagonally
    [[ring]] = mask_polygons(mask, 1.0)
    assert len(ring) == 9 and (ring[0] == ring[-1]).all()  # 8 corners, closed
    assert sorted(map(tuple, ring[:-1].tolist())) == [
        (3.0, 2.5), (3.0, 4.5), (3.5, 2.0), (3.5, 5.0), (7.5, 2.0), (7.5, 5.0), (8.0, 2.5), (8.0, 4.5)]
    np.testing.assert_array_equal(rasterize_lesions([Lesion(ring)], mask.shape, 1.0), mask)


def test_focus_geojson_reads_back_onto_the_right_patches(report_archive: dict[str, Path]) -> None:
    slide_dir = report_archive["positive"]
    path = slide_dir / FOCUS_GEOJSON
    audit, maps, store = load_audit(slide_dir), open_maps(slide_dir), open_patch_store(slide_dir)
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    classes = {f["properties"]["classification"]["name"] for f in collection["features"]}
    amil = method_title("attention")
    assert {"Top patch", f"Peak: {amil}", f"Top 10%: {amil}"} <= classes

    patches, _ = read_classified(path, LesionRules(["Top patch"], []))
    footprint = float(store.attrs["footprint"])
    assert len(patches) == len(audit["top_patches"])
    for square, patch in zip(patches, audit["top_patches"], strict=True):
        x, y = store.coords[patch["index"]]
        assert square.bounds() == (x, y, x + footprint, y + footprint)

    regions = [f for f in collection["features"] if f["geometry"]["type"] == "MultiPolygon"]
    assert len(regions) == len(audit["methods"])
    for method in audit["methods"]:
        title, values = method_title(method), maps[method]
        expected = top_k_mask(values, maps.tissue & np.isfinite(values), TOP_FRACTION)
        read, _ = read_classified(path, LesionRules([f"Top 10%: {title}"], []))
        np.testing.assert_array_equal(rasterize_lesions(read, values.shape, maps.downsample), expected)
        points = [f["geometry"]["coordinates"] for f in collection["features"]
                  if f["properties"]["classification"]["name"] == f"Peak: {title}"]
        assert len(points) == len(audit["peaks"][method]) >= 1
        for rank, ((x, y), peak) in enumerate(zip(points, audit["peaks"][method], strict=True)):
            row, col = int(y // maps.downsample), int(x // maps.downsample)
            assert values[row, col] == peak["value"] and (rank or expected[row, col])
            on = ((store.coords[:, 0] <= x) & (x < store.coords[:, 0] + footprint)
                  & (store.coords[:, 1] <= y) & (y < store.coords[:, 1] + footprint))
            assert on.any()  # the peak lies on a tiled patch
