"""Which annotation classes are lesions: rules, settings, the maps' record and the CLI flags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_annotations import SQUARE, asap_xml, feature

from fake_stores import make_slide_case
from pipeline.cli import main
from pipeline.commands.run import build_config
from tiling.annotations import LesionRules, read_classified
from tiling.config import StitchConfig
from tiling.errors import ConfigError
from tiling.stitch import stitch_slide
from tiling.store import read_stamp
from tiling.store.maps import open_maps


def qupath(path: Path, *classes: str) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [feature(SQUARE, c) for c in classes]}))
    return path


def test_classes_choose_lesions_and_are_listed_by_role(tmp_path: Path) -> None:
    path = qupath(tmp_path / "q.geojson", "Tumor", "Invborder", "Stroma", "_2")
    lesions, classes = read_classified(path)
    assert [lesion.group for lesion in lesions] == ["Tumor", "Invborder"]  # today's GeoJSON rule
    assert classes == {"lesion": ["Invborder", "Tumor"], "exclusion": ["_2"], "ignored": ["Stroma"]}
    lesions, classes = read_classified(path, LesionRules(["tumor"], ["stroma"]))
    assert [lesion.group for lesion in lesions] == ["Tumor"] and len(lesions[0].holes) == 1
    assert classes == {"lesion": ["Tumor"], "exclusion": ["Stroma"], "ignored": ["Invborder", "_2"]}
    xml = asap_xml(tmp_path / "a.xml", [("_1", SQUARE[:4]), ("Tumor", SQUARE[:4]), ("Other", SQUARE[:4])])
    assert read_classified(xml)[1] == {"lesion": ["Tumor", "_1"], "exclusion": [], "ignored": ["Other"]}
    assert read_classified(xml, LesionRules(["tum*"]))[1]["lesion"] == ["Tumor"]  # shell patterns


@pytest.mark.parametrize(("settings", "problem"), [
    ({"lesion_classes": ("Tumor", " ")}, "lesion_classes"),
    ({"lesion_classes": ("Tumor",), "exclude_classes": ("tumor",)}, "disjoint from exclude_classes"),
])
def test_class_settings_are_checked(settings: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        StitchConfig(**settings)


def test_flags_and_set_give_class_lists() -> None:
    config = build_config(None, ("stitch.exclude_classes=[_2, Necrosis]",),
                          {"stitch.lesion_classes": "Tumor, Metastasis"})
    assert config.stitch.lesion_classes == ("Tumor", "Metastasis")
    assert config.stitch.exclude_classes == ("_2", "Necrosis")
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--lesion-classes" in help_text and "--exclude-classes" in help_text


def test_maps_record_the_classes_and_restitch_when_they_change(tmp_path: Path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "cmu")
    path = stitch_slide(slide_dir, annotations, StitchConfig(max_side=256))
    stamp = read_stamp(path)
    maps = open_maps(slide_dir)
    assert maps.attrs["annotation_classes"] == {"lesion": ["Tumor"], "exclusion": [], "ignored": []}
    assert maps.attrs["lesion_names"] == ["Tumor 1"]
    stitch_slide(slide_dir, annotations, StitchConfig(max_side=256, lesion_classes=("Other",)))
    assert read_stamp(path) != stamp
    maps = open_maps(slide_dir)
    assert maps.attrs["lesion_names"] == [] and not maps.lesion.any()
    assert maps.attrs["annotation_classes"]["ignored"] == ["Tumor"]
