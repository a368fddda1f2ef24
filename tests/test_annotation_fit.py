"""Annotations brought onto the slide: their scale (manifest annotation_downsample or
annotation_mpp, an XML's MicronsPerPixel), the check that they fit before any metric, and one
count per lesion when several files hold it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import manifest_rows, shared_file
from fake_stores import lesion_geojson, make_slide_case
from tiling.annotation_fit import check_fit
from tiling.annotations import Lesion, read_classified
from tiling.config import StitchConfig
from tiling.errors import AnnotationError
from tiling.slide import open_slide
from tiling.stitch import AnnotationScale, geometry_key, slide_lesions, stitch_slide
from tiling.store import MAPS
from tiling.store.maps import open_maps

SQUARE = [(850.0, 1250.0), (1350.0, 1250.0), (1350.0, 1750.0), (850.0, 1750.0)]  # make_slide_case's lesion


def _scaled_case(tmp_path: Path, factor: float) -> tuple[Path, Path]:
    """The real slide's fake stores with its lesion written at `factor` x level-0 coordinates."""
    slide_dir, _ = make_slide_case(tmp_path, "cmu", lesion=False)
    notes = lesion_geojson(tmp_path / "level0.geojson", [[(x * factor, y * factor) for x, y in SQUARE]])
    return slide_dir, notes


def _lesion_pixels(slide_dir: Path) -> int:
    return int((open_maps(slide_dir).lesion > 0).sum())


def test_the_message_estimates_the_scale_factor() -> None:
    ring = np.array([[1000.0, 200_000.0], [4000.0, 200_000.0], [4000.0, 221_184.0], [1000.0, 221_184.0]])
    with pytest.raises(AnnotationError, match=r"a\.xml: 100% of the annotated area lies outside the slide: "
                       r"coordinates reach 221,184 px but the slide is 7,168 px high: about 32 x; "
                       r"set annotation_downsample=32"):
        check_fit(Path("a.xml"), [Lesion(ring)], (8192, 7168), 1.0)
    check_fit(Path("a.xml"), [Lesion(ring / 32)], (8192, 7168), 32.0)
    edge = np.array([[0.0, 7000.0], [100.0, 7000.0], [100.0, 7180.0], [0.0, 7180.0]])  # 6.7 % outside
    with pytest.raises(AnnotationError,
                       match=r"a\.xml: 7% of the annotated area .* \(past its edges, not at another level's scale\)"):
        check_fit(Path("a.xml"), [Lesion(edge)], (8192, 7168), 1.0)
    check_fit(Path("a.xml"), [Lesion(edge - [0, 5])], (8192, 7168), 1.0)      # 3 % outside: fits


def test_level0_annotations_on_a_downsampled_slide_fail_before_any_map(tmp_path: Path) -> None:
    slide_dir, notes = _scaled_case(tmp_path, 32)
    with pytest.raises(AnnotationError, match=r"level0\.geojson: 100% .*coordinates reach 43,200 px "
                                              r"but the slide is 2,220 px wide: about 32 x"):
        stitch_slide(slide_dir, [notes], StitchConfig(max_side=512))
    assert not (slide_dir / MAPS).exists()
    stitch_slide(slide_dir, [notes], StitchConfig(max_side=512), AnnotationScale(downsample=32))
    attrs = attrs_of(slide_dir)
    assert attrs["annotation_downsample"] == {"level0.geojson": 32.0}
    assert attrs["annotation_scale_source"] == {"level0.geojson": "manifest"}
    assert _lesion_pixels(slide_dir) == pytest.approx(500 * 500 / attrs["downsample"] ** 2, rel=0.1)


def test_annotation_mpp_and_an_xml_microns_per_pixel_scale_alike(tmp_path: Path) -> None:
    slide_dir, notes = _scaled_case(tmp_path, 4)
    slide_mpp = float(zarr.open_group(slide_dir / "patches.zarr", mode="r").attrs["slide_mpp"])
    stitch_slide(slide_dir, [notes], StitchConfig(max_side=512),
                 AnnotationScale(mpp=slide_mpp / 4))
    by_mpp = _lesion_pixels(slide_dir)
    xml = tmp_path / "recorded.xml"
    points = "".join(f'<Coordinate Order="{i}" X="{x * 4}" Y="{y * 4}"/>' for i, (x, y) in enumerate(SQUARE))
    xml.write_text(f'<ASAP_Annotations MicronsPerPixel="{slide_mpp / 4}"><Annotations><Annotation '
                   f'Name="t" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{points}</Coordinates>'
                   '</Annotation></Annotations></ASAP_Annotations>')
    stitch_slide(slide_dir, [xml], StitchConfig(max_side=512))
    assert attrs_of(slide_dir)["annotation_scale_source"] == {"recorded.xml": "file"}
    assert _lesion_pixels(slide_dir) == by_mpp > 0


def attrs_of(slide_dir: Path) -> dict:
    return open_maps(slide_dir).attrs


def test_a_lesion_in_both_the_geojson_and_the_xml_counts_once(sample_archive: Path) -> None:
    row = manifest_rows(sample_archive)[0]                 # a positive sample slide: 1-3 lesions
    geojson, xml = Path(row["annotation"]), Path(row["annotation_xml"])
    count = len(read_classified(geojson)[0])
    assert count >= 1 and len(read_classified(xml)[0]) == count
    with open_slide(Path(row["path"])) as slide:
        dimensions, mpp = slide.dimensions, slide.mpp
    lesions, read = slide_lesions([geojson, xml], dimensions, mpp, AnnotationScale())
    assert len(lesions) == count and read["duplicate_lesions"] == count
    assert [lesion.name for lesion in lesions] == [lesion.name for lesion in read_classified(geojson)[0]]
    moved = [replace(lesion, exterior=lesion.exterior + 5) for lesion in read_classified(xml)[0]]
    assert all(geometry_key(a) != geometry_key(b) for a, b in zip(moved, read_classified(geojson)[0], strict=False))


@pytest.mark.parametrize(("name", "factor"), [("geojson_example.json", 64), ("holed.geojson", 8)])
def test_real_qupath_exports_of_another_slide_do_not_fit_the_real_slide(name: str, factor: int) -> None:
    notes = shared_file(name)                              # level-0 px of slides far larger than CMU-1
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        dimensions, mpp = slide.dimensions, slide.mpp
    with pytest.raises(AnnotationError, match=rf"{name}: 100% of the annotated area lies outside the "
                       rf"slide: .*slide is 2,967 px high: about {factor} x; set annotation_downsample={factor}"):
        slide_lesions([notes], dimensions, mpp, AnnotationScale())
