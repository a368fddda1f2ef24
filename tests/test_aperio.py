"""Aperio ImageScope XML: regions as lesions by layer, negative regions, ellipses, MicronsPerPixel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiling.annotation_fit import annotation_downsample
from tiling.annotations import LesionRules, read_classified
from tiling.errors import AnnotationError
from tiling.stitch import AnnotationScale, slide_lesions


def region(vertices: list[tuple[float, float]], text: str = "", negative: bool = False) -> str:
    points = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
    return (f'<Region Id="1" Type="0" Text="{text}" NegativeROA="{int(negative)}"><Attributes/>'
            f"<Vertices>{points}</Vertices></Region>")


def aperio(path: Path, layers: dict[str, list[str]], mpp: float | None = 0.5) -> Path:
    body = "".join(f'<Annotation Id="{i}" Name="{name}" Type="4"><Regions>{"".join(regions)}</Regions></Annotation>'
                   for i, (name, regions) in enumerate(layers.items(), start=1))
    attribute = f' MicronsPerPixel="{mpp}"' if mpp else ""
    path.write_text(f"<Annotations{attribute}>{body}</Annotations>")
    return path


SQUARE = [(0, 0), (100, 0), (100, 100), (0, 100)]


def test_regions_are_lesions_by_layer_with_negative_regions_subtracted(tmp_path: Path) -> None:
    path = aperio(tmp_path / "a.xml", {
        "Tumor": [region(SQUARE, "T1"), region([(40, 40), (60, 60)], negative=True),
                  region([(200, 0), (300, 100)], "E")],
        "Stroma": [region(SQUARE)]})
    lesions, classes = read_classified(path)
    assert [(lesion.name, lesion.group) for lesion in lesions] == [("T1", "Tumor"), ("E", "Tumor")]
    assert classes == {"lesion": ["Tumor"], "exclusion": ["exclusion"], "ignored": ["Stroma"]}
    assert len(lesions[0].holes) == 1 and not lesions[1].holes
    ellipse = lesions[1].exterior
    assert len(ellipse) == 64 and lesions[1].bounds() == pytest.approx((200, 0, 300, 100))
    assert np.hypot(*(ellipse - [250, 50]).T) == pytest.approx(50)
    assert [lesion.group for lesion in read_classified(path, LesionRules(["stroma"]))[0]] == ["Stroma"]


def test_microns_per_pixel_scales_the_regions_to_the_slide(tmp_path: Path) -> None:
    path = aperio(tmp_path / "a.xml", {"Tumor": [region(SQUARE, "T1")]}, mpp=0.5)
    assert annotation_downsample(path, 0.25) == (0.5, "file")
    [lesion], info = slide_lesions([path], (1000, 1000), 0.25, AnnotationScale())
    assert lesion.bounds() == pytest.approx((0, 0, 200, 200)) and info["annotation_classes"]["lesion"] == ["Tumor"]


def test_a_vertex_without_coordinates_names_the_region(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text('<Annotations><Annotation Id="3" Name="T"><Regions><Region Id="7"><Vertices>'
                    '<Vertex X="1"/></Vertices></Region></Regions></Annotation></Annotations>')
    with pytest.raises(AnnotationError, match=r"bad\.xml: malformed .*annotation 3 region 7: vertex 0 lacks its Y"):
        read_classified(path)
