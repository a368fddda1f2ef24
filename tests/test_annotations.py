"""Lesion annotations: QuPath GeoJSON and ASAP XML, real exports and generated ones, masks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import manifest_rows, shared_file
from tiling.annotations import Lesion, LesionRules, rasterize_lesions, read_classified
from tiling.errors import AnnotationError


def shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def asap_xml(path: Path, annotations: list[tuple[str, list[tuple[float, float]]]]) -> Path:
    rows = []
    for i, (group, ring) in enumerate(annotations):
        coords = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>' for j, (x, y) in enumerate(ring))
        rows.append(f'<Annotation Name="A{i}" Type="Polygon" PartOfGroup="{group}">'
                    f"<Coordinates>{coords}</Coordinates></Annotation>")
    path.write_text(f"<ASAP_Annotations><Annotations>{''.join(rows)}</Annotations></ASAP_Annotations>")
    return path


def feature(ring: list[list[float]], cls: str | None = None, **props: str) -> dict:
    properties = {"objectType": "annotation", **props}
    if cls is not None:
        properties["classification"] = {"name": cls}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties}


SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]


def test_qupath_export_list_of_multipolygon_features() -> None:
    lesions = read_classified(shared_file("geojson_example.json"))[0]
    assert [lesion.group for lesion in lesions] == ["Tumor"] * 3 + ["Invborder"] * 5
    assert [len(lesion.holes) for lesion in lesions] == [0, 0, 0, 1, 0, 0, 0, 0]
    assert all(lesion.exterior.shape[1] == 2 and lesion.exterior.dtype == np.float64 for lesion in lesions)
    assert lesions[0].exterior[0].tolist() == [33149, 54671]
    assert len(read_classified(shared_file("geojson_example.json"), LesionRules(["tumor"]))[0]) == 3


def test_polygon_with_hole_rasterises_to_its_area() -> None:
    [lesion] = read_classified(shared_file("holed.geojson"))[0]
    assert lesion.name == "2aa7e31c-8437-499d-ba61-88aacd9a2c3f" and len(lesion.holes) == 1
    downsample = 8.0
    mask = rasterize_lesions([lesion], (19500 // 8 + 1, 13400 // 8 + 1), downsample)
    expected = (shoelace(lesion.exterior) - shoelace(lesion.holes[0])) / downsample ** 2
    assert mask.sum() == pytest.approx(expected, rel=0.01)
    hx, hy = lesion.holes[0].mean(axis=0) / downsample
    assert not mask[int(hy), int(hx)]
    assert mask[16800 // 8, 10200 // 8]


def test_rasterise_uses_pixel_centres() -> None:
    square = Lesion(np.array([[10.0, 10], [30, 10], [30, 30], [10, 30]]))
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True      # centres (15, 15), (25, 25) inside; (5, 5) and (35, 35) not
    np.testing.assert_array_equal(rasterize_lesions([square], (5, 5), 10.0), expected)
    np.testing.assert_array_equal(rasterize_lesions([square], (2, 2), 10.0), expected[:2, :2])
    assert not rasterize_lesions([], (3, 3), 1.0).any()


def test_sample_slide_geojson_and_xml_give_the_same_mask(sample_archive: Path) -> None:
    row = manifest_rows(sample_archive)[0]
    from_json = read_classified(Path(row["annotation"]))[0]
    from_xml = read_classified(Path(row["annotation_xml"]))[0]
    assert len(from_json) == len(from_xml) >= 1
    assert len(from_json[0].holes) == 1 and len(from_xml[0].holes) >= 1   # hole vs `_2` exclusion
    shape = (2304 // 4, 3072 // 4)
    mask = rasterize_lesions(from_json, shape, 4.0)
    np.testing.assert_array_equal(mask, rasterize_lesions(from_xml, shape, 4.0))
    no_holes = rasterize_lesions([Lesion(lesion.exterior) for lesion in from_json], shape, 4.0)
    assert mask.sum() > 100 and (no_holes & ~mask).sum() > 10
    negative = manifest_rows(sample_archive)[1]
    for column in ("annotation", "annotation_xml"):
        assert read_classified(Path(negative[column]))[0] == []


def test_camelyon_groups_and_exclusion(tmp_path: Path) -> None:
    path = asap_xml(tmp_path / "c16.xml", [
        ("_0", [(0, 0), (100, 0), (100, 100), (0, 100)]),
        ("_2", [(40, 40), (60, 40), (60, 60), (40, 60)]),
        ("Tumor", [(200, 0), (300, 0), (300, 100)]),
        ("Other", [(400, 0), (500, 0), (500, 100)]),
    ])
    lesions = read_classified(path)[0]
    assert [lesion.group for lesion in lesions] == ["_0", "Tumor"]
    mask = rasterize_lesions(lesions, (10, 50), 10.0)
    assert mask[:, :10].sum() == 100 - 4 and not mask[4:6, 4:6].any()
    assert mask[:, 40:].sum() == 0
    assert [lesion.group for lesion in read_classified(path, LesionRules(["other"]))[0]] == ["Other"]


def test_geojson_class_rule(tmp_path: Path) -> None:
    detection = feature(SQUARE, "Tumor")
    detection["properties"]["objectType"] = "detection"
    path = tmp_path / "classes.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature(SQUARE, "Tumor"), feature(SQUARE), feature(SQUARE, "Stroma"), feature(SQUARE, "Ignore*"),
        feature([[20, 20], [40, 20], [40, 40], [20, 20]], "Exclusion"), detection,
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ]}))
    lesions = read_classified(path)[0]
    assert [lesion.group for lesion in lesions] == ["Tumor", ""]
    assert all(len(lesion.holes) == 1 for lesion in lesions)       # the exclusion overlaps both


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("broken.geojson", json.dumps(feature([[0, 0], [10, 10], [0, 0]])), "at least 3 distinct vertices"),
    ("gap.geojson", json.dumps(feature([[0, 0], [10], [10, 10], [0, 0]])), "coordinate pairs"),
    ("word.json", json.dumps(feature([[0, 0], ["a", 1], [10, 10], [0, 0]])), "not a number"),
    ("nocoords.geojson", json.dumps({"type": "Feature", "geometry": {"type": "Polygon"}}), "no coordinates"),
    ("bad.geojson", '{"type": "FeatureCollection", "features": [', "Expecting value"),
    ("scalar.geojson", "42", "expected a FeatureCollection"),
    ("nox.xml", '<ASAP_Annotations><Annotations><Annotation Name="T" PartOfGroup="_0"><Coordinates>'
                '<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" Y="5"/>'
                '<Coordinate Order="2" X="5" Y="5"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     "coordinate 1 lacks its X"),
    ("cut.xml", "<ASAP_Annotations><Annotations>", "no element found"),
    ("shapes.shp", "x", "unknown annotation format"),
])
def test_malformed_files_raise_annotation_error(tmp_path: Path, name: str, text: str, problem: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AnnotationError, match=rf"{re.escape(name)}: .*{re.escape(problem)}"):
        read_classified(path)[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"gone\.xml: no such annotation file"):
        read_classified(tmp_path / "gone.xml")[0]
