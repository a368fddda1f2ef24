"""focus.geojson (peaks, top patches, top-10 % regions, audited lesions) and tiles.geojson (every
patch as a QuPath tile with measurements), read back by our own annotation reader and onto the
stores the values came from, and checked against QuPath's GeoJSON rules (shapely validity)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from shapely.geometry import LinearRing, Polygon, shape
from skimage.measure import find_contours

from conftest import manifest_rows
from explainers.methods.registry import title as method_title
from fake_stores import write_explain_store
from reports.audit.config import AuditConfig
from reports.audit.metrics import top_k_mask
from reports.audit.stage import audit_slide
from reports.geojson import (
    ARTEFACT_SHARE,
    ATTENTION,
    ATTENTION_RANK,
    AUDITED_LESION,
    LESION_SHARE,
    LESION_TILE,
    METHOD_MEAN,
    TILE_CLASS,
    TISSUE_SHARE,
    TOP_FRACTION,
    corner_rings,
    mask_polygons,
    write_qupath_geojson,
)
from tiling.annotations import Lesion, LesionRules, rasterize_lesions, read_classified
from tiling.artefacts import ARTEFACT_KINDS
from tiling.config import StitchConfig
from tiling.stitch import PatchGrid, stitch_slide
from tiling.store import EXPLAIN, FOCUS_GEOJSON, TILES_GEOJSON, open_patch_store
from tiling.store.explain import open_explain_store
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


def _outline(ring: np.ndarray) -> tuple:
    """A closed ring as its points from the least, in the direction of its lesser second point."""
    points = [tuple(p) for p in np.round(ring[:-1], 6).tolist()]
    walks = []
    for walk in (points, points[::-1]):
        start = walk.index(min(walk))
        walks.append(tuple(walk[start:] + walk[:start]))
    return min(walks)


def test_mask_polygons_trace_what_scikit_images_marching_squares_traces() -> None:
    """Random masks (specks, diagonal touches, holes, islands in holes, edges): the same rings as
    find_contours at level 1/2 with fully_connected="high", reduced to their corners; each hole
    in the exterior around it."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        shape = tuple(rng.integers(1, 24, 2))
        mask = rng.random(shape) < rng.uniform(0.1, 0.9)
        if trial % 2:
            mask = ndimage.binary_opening(mask) | (rng.random(shape) < 0.05)
        contours = find_contours(np.pad(mask.astype(np.float32), 1), 0.5, fully_connected="high")
        rings = [corner_rings((c[:-1, ::-1] - 0.5) * 3.0, np.array([len(c) - 1]))[0][0] for c in contours]
        expected = sorted(_outline(r) for r in rings)
        polygons = mask_polygons(mask, 3.0)
        assert sorted(_outline(r) for p in polygons for r in p) == expected
        for exterior, *holes in polygons:
            assert LinearRing(exterior).is_ccw and not any(LinearRing(h).is_ccw for h in holes)
            assert Polygon(exterior, holes).is_valid
        lesions = [Lesion(p[0], p[1:]) for p in polygons]
        np.testing.assert_array_equal(rasterize_lesions(lesions, mask.shape, 3.0), mask)


def test_rings_keep_only_their_corners() -> None:
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:8] = True  # 3 x 5 px: marching squares cuts each corner pixel diagonally
    [[ring]] = mask_polygons(mask, 1.0)
    assert len(ring) == 9 and (ring[0] == ring[-1]).all()  # 8 corners, closed
    assert sorted(map(tuple, ring[:-1].tolist())) == [
        (3.0, 2.5), (3.0, 4.5), (3.5, 2.0), (3.5, 5.0), (7.5, 2.0), (7.5, 5.0), (8.0, 2.5), (8.0, 4.5)]
    np.testing.assert_array_equal(rasterize_lesions([Lesion(ring)], mask.shape, 1.0), mask)


def test_outlines_on_the_slides_edge_stay_inside_the_slide() -> None:
    """A slide of 22 x 15 level-0 px on a 6 x 4 map of 4 px: the last row and column pass its edge."""
    mask = np.zeros((4, 6), bool)
    mask[1:, 3:] = True   # reaches the bottom and right edges
    [[ring]] = mask_polygons(mask, 4.0)
    assert ring[:, 0].max() == 24 and ring[:, 1].max() == 16  # the map's edge, past the slide's
    [[inside]] = mask_polygons(mask, 4.0, (22.0, 15.0))
    assert inside[:, 0].max() == 22 and inside[:, 1].max() == 15 and (inside[0] == inside[-1]).all()
    assert Polygon(inside).is_valid and LinearRing(inside).is_ccw
    np.testing.assert_array_equal(rasterize_lesions([Lesion(inside)], mask.shape, 4.0), mask)


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

    regions = [f for f in collection["features"]
               if f["properties"]["classification"]["name"].startswith(f"Top {TOP_FRACTION:.0%}: ")]
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


@pytest.fixture(scope="module")
def inked_slide(tile_sample, sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample slide 0 (real TIFF: tissue, a lesion, pen ink and a fold) tiled by the real tiler,
    with explain.zarr peaking on its tissue (fake_stores), stitched, audited and reported."""
    slide_dir = tmp_path_factory.mktemp("inked") / "slides" / "sample_000"
    shutil.copytree(tile_sample(0), slide_dir / "patches.zarr")
    store = open_patch_store(slide_dir)
    centre = tuple(store.coords[len(store) // 2] + store.attrs["footprint"] / 2)
    write_explain_store(slide_dir, store.attrs, centre, tuple(store.coords[0]))
    stitch_slide(slide_dir, [Path(manifest_rows(sample_archive)[0]["annotation"])], StitchConfig(max_side=512))
    audit_slide(slide_dir, 1, AuditConfig())
    write_qupath_geojson(slide_dir, load_audit(slide_dir), open_maps(slide_dir))
    return slide_dir


@pytest.fixture(params=["positive", "inked"])
def qupath_slide(request: pytest.FixtureRequest, report_archive: dict[str, Path]) -> Path:
    """A slide folder whose report stage wrote focus.geojson and tiles.geojson: the CMU-1 region
    with a lesion, and the sample slide with pen ink."""
    return report_archive["positive"] if request.param == "positive" else request.getfixturevalue("inked_slide")


def strict_json(path: Path) -> dict:
    """The file parsed as standard JSON (NaN or Infinity fail the test)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path.name}: {constant} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_tiles_read_back_onto_the_same_pixels(qupath_slide: Path) -> None:
    store, maps = open_patch_store(qupath_slide), open_maps(qupath_slide)
    explain = open_explain_store(qupath_slide / EXPLAIN, store)
    features = strict_json(qupath_slide / TILES_GEOJSON)["features"]
    assert len(features) == len(store) and {f["properties"]["objectType"] for f in features} == {"tile"}
    width, height = store.attrs["dimensions"]
    footprint = float(store.attrs["footprint"])
    corners = np.array([f["geometry"]["coordinates"][0][0] for f in features])
    np.testing.assert_array_equal(corners, store.coords)
    for f, (x, y) in zip(features, store.coords.tolist(), strict=True):
        (x0, y0), (x1, y1) = np.min(f["geometry"]["coordinates"][0], 0), np.max(f["geometry"]["coordinates"][0], 0)
        assert (x0, y0, x1, y1) == (x, y, min(x + footprint, width), min(y + footprint, height))

    def column(name: str) -> np.ndarray:
        return np.array([f["properties"]["measurements"].get(name, np.nan) for f in features])

    # constant per patch, stitched from the file onto the map grid: the maps' own pixels
    grid = PatchGrid(corners, footprint, maps.downsample, maps.tissue.shape)
    coverage = grid.coverage()
    for name, stored in ((ATTENTION, "attention"), (ATTENTION_RANK, "attention_rank")):
        stitched = grid.stitch(column(name)[:, None, None], coverage)
        np.testing.assert_allclose(stitched, maps[stored], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(column(ATTENTION), explain["attention"][:])
    for method in explain.attrs["methods"]:
        np.testing.assert_allclose(column(METHOD_MEAN.format(method_title(method))),
                                   explain[method][:].mean(axis=(1, 2)), rtol=1e-6)
    for kind, name in ARTEFACT_KINDS.items():
        np.testing.assert_array_equal(column(ARTEFACT_SHARE.format(name)), store.artefacts.shares[:, kind - 1])
    np.testing.assert_array_equal(column(TISSUE_SHARE), store.tissue)
    lesion = maps.lesion > 0
    expected = [lesion[r0:r1, c0:c1].mean() if r1 > r0 and c1 > c0 else np.nan
                for r0, r1, c0, c1 in zip(grid.r0, grid.r1, grid.c0, grid.c1, strict=True)]
    np.testing.assert_allclose(column(LESION_SHARE), expected, equal_nan=True)

    classes = [f["properties"]["classification"]["name"] for f in features]
    for cls, kind, share in zip(classes, store.artefacts.kind, column(LESION_SHARE), strict=True):
        assert cls == (TILE_CLASS.format(ARTEFACT_KINDS[int(kind)]) if kind else
                       TILE_CLASS.format("lesion" if share >= LESION_TILE else "tissue"))
    assert TILE_CLASS.format("lesion") in classes
    if qupath_slide.name == "sample_000":  # its fold covers whole tiles, its ink touches some
        assert TILE_CLASS.format("tissue fold") in classes
        assert column(ARTEFACT_SHARE.format("pen ink")).max() > 0


def check_ring(ring: list[list[float]], exterior: bool, bounds: tuple[float, float]) -> None:
    assert len(ring) >= 4 and ring[0] == ring[-1]  # closed
    line = LinearRing(ring)
    assert line.is_valid and line.is_ccw == exterior, ring  # exterior counter-clockwise, holes not
    xs, ys = np.array(ring).T
    assert xs.min() >= 0 and ys.min() >= 0 and xs.max() <= bounds[0] and ys.max() <= bounds[1]


def test_every_geometry_and_measurement_follows_qupaths_rules(qupath_slide: Path) -> None:
    bounds = tuple(float(v) for v in open_patch_store(qupath_slide).attrs["dimensions"])
    for name in (FOCUS_GEOJSON, TILES_GEOJSON):
        collection = strict_json(qupath_slide / name)
        assert collection["type"] == "FeatureCollection" and collection["features"]
        for feature in collection["features"]:
            assert feature["type"] == "Feature"
            geometry, properties = feature["geometry"], feature["properties"]
            assert shape(geometry).is_valid, feature  # closed rings, no self-intersection
            polygons = {"Polygon": [geometry["coordinates"]], "MultiPolygon": geometry["coordinates"],
                        "Point": []}[geometry["type"]]
            for exterior, *holes in polygons:
                check_ring(exterior, True, bounds)
                for hole in holes:
                    check_ring(hole, False, bounds)
            if geometry["type"] == "Point":
                x, y = geometry["coordinates"]
                assert 0 <= x <= bounds[0] and 0 <= y <= bounds[1]
            assert properties["objectType"] == ("tile" if name == TILES_GEOJSON else "annotation")
            cls = properties["classification"]
            assert isinstance(cls["name"], str) and len(cls["color"]) == 3
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
            measurements = properties["measurements"]
            assert all(isinstance(k, str) and type(v) in (int, float) and np.isfinite(v)
                       for k, v in measurements.items()), measurements


def test_audited_lesions_are_annotations_on_the_lesion_pixels(qupath_slide: Path) -> None:
    maps = open_maps(qupath_slide)
    path = qupath_slide / FOCUS_GEOJSON
    lesions, _ = read_classified(path, LesionRules([AUDITED_LESION], []))
    assert [str(lesion.name) for lesion in lesions] == maps.attrs["lesion_names"] != []
    for k, lesion in enumerate(lesions, start=1):
        np.testing.assert_array_equal(rasterize_lesions([lesion], maps.lesion.shape, maps.downsample),
                                      maps.lesion == k)
