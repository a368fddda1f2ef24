"""Reading an archive: a manifest CSV or a folder of slides with annotations beside them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.archive import ArchiveError, SlideRecord, read_archive


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_manifest_paths_labels_and_annotations(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "archive" / "manifest.csv",
                      "slide_id,path,label,annotation,annotation_xml\n"
                      "a,slides/a.tif,1,notes/a.geojson,notes/a.xml\n"
                      ",slides/b.tif,0,,\n"
                      "c,/abs/c.svs,,,\n")
    root = manifest.parent
    assert read_archive(manifest) == [
        SlideRecord("a", root / "slides/a.tif", 1, (root / "notes/a.geojson", root / "notes/a.xml")),
        SlideRecord("b", root / "slides/b.tif", 0, ()),
        SlideRecord("c", Path("/abs/c.svs"), None, ()),
    ]


def test_folder_matches_annotations_by_stem(tmp_path: Path) -> None:
    for name in ("s1.svs", "s1.geojson", "s1.xml", "s2.tiff", "other.geojson", "notes.txt"):
        _write(tmp_path / name)
    _write(tmp_path / "sub" / "s3.svs")
    assert read_archive(tmp_path) == [
        SlideRecord("s1", tmp_path / "s1.svs", None, (tmp_path / "s1.geojson", tmp_path / "s1.xml")),
        SlideRecord("s2", tmp_path / "s2.tiff", None, ()),
    ]


@pytest.mark.parametrize(("csv_text", "problem"), [
    ("slide_id,file\na,a.tif\n", "no `path` column"),
    ("path,label\na.tif,yes\n", "label 'yes' is not a whole number"),
    ("path,label\na.tif,0.5\n", "label '0.5' is not a whole number"),
    ("slide_id,path\nx,a.tif\nx,b.tif\n", "'x' appears twice"),
    ("slide_id,path\n../up,a.tif\n", "not a usable folder name"),
    ("path\n\n", "no slides found"),
    ("path,label\n ,1\n", "line 2: empty `path`"),
])
def test_bad_manifest_names_file_and_problem(tmp_path: Path, csv_text: str, problem: str) -> None:
    manifest = _write(tmp_path / "m.csv", csv_text)
    with pytest.raises(ArchiveError, match=re.escape(problem)) as info:
        read_archive(manifest)
    assert str(manifest) in str(info.value)


def test_empty_folder_and_unknown_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no slides found"):
        read_archive(tmp_path)
    with pytest.raises(ArchiveError, match=r"not a manifest \.csv nor a folder"):
        read_archive(_write(tmp_path / "list.txt", "a.svs\n"))
