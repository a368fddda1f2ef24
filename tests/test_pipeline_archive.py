"""Reading an archive (`tiling.archive`, the one reader of `run`, `train`, `slides` and the DAG):
a manifest CSV or a folder of slides with annotations beside them."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from explainers.train import TrainConfig, train
from pipeline.cli import main
from pipeline.errors import EXIT_USAGE
from tiling.archive import SlideRecord, check_slide_id, read_archive
from tiling.errors import ArchiveError

CLASSES = ["normal", "lesion"]


def _write(path: Path, text: str = "", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_manifest_paths_labels_and_annotations(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "archive" / "manifest.csv",
                      "slide_id,path,label,annotation,annotation_xml\n"
                      "a,slides/a.tif,1,notes/a.geojson,notes/a.xml\n"
                      ",slides/b.tif,normal,,\n"
                      "c,/abs/c.svs,,,\n")
    root = manifest.parent
    records = read_archive(manifest, CLASSES)
    assert [replace(r, columns=()) for r in records] == [
        SlideRecord("a", root / "slides/a.tif", (1,), (root / "notes/a.geojson", root / "notes/a.xml")),
        SlideRecord("b", root / "slides/b.tif", (0,), ()),
        SlideRecord("c", Path("/abs/c.svs"), None, ()),
    ]
    assert dict(records[1].columns) == {"slide_id": "", "path": "slides/b.tif", "label": "normal",
                                        "annotation": "", "annotation_xml": ""}   # every cell, as written
    assert [r.label for r in records] == [1, 0, None]
    assert [r.labels for r in read_archive(manifest)] == [None, None, None]  # no classes: labels unread


def test_a_byte_order_mark_keeps_the_first_column(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.csv", "slide_id,path,label\nx1,a.tif,lesion\n", encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(r.slide_id, r.labels) for r in read_archive(manifest, CLASSES)] == [("x1", (1,))]


def test_multi_label_models_list_several_classes(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.csv", "path,label\na.tif,lesion;ink\nb.tif,1\nc.tif,;\nd.tif,\n")
    records = read_archive(manifest, ["lesion", "ink"], multi_label=True)
    assert [r.labels for r in records] == [(0, 1), (1,), (), None]
    with pytest.raises(ArchiveError, match=r"line 2: label 'lesion;ink'.*one class per slide"):
        read_archive(manifest, ["lesion", "ink"])


def test_folder_matches_annotations_by_stem(tmp_path: Path) -> None:
    for name in ("s1.svs", "s1.geojson", "s1.xml", "s2.tiff", "other.geojson", "notes.txt"):
        _write(tmp_path / name)
    _write(tmp_path / "sub" / "s3.svs")
    assert read_archive(tmp_path, CLASSES) == [
        SlideRecord("s1", tmp_path / "s1.svs", None, (tmp_path / "s1.geojson", tmp_path / "s1.xml")),
        SlideRecord("s2", tmp_path / "s2.tiff", None, ()),
    ]


@pytest.mark.parametrize(("csv_text", "problem"), [
    ("slide_id,file\na,a.tif\n", "no `path` column"),
    ("path,label\na.tif,yes\n", "line 2: label 'yes' is neither a class"),
    ("path,label\na.tif,0.5\n", "label '0.5' is neither a class"),
    ("path,label\na.tif,2\n", "label '2' is neither a class.*index below 2"),
    ("path,label\na.tif,-1\n", "label '-1' is neither a class"),
    ("slide_id,path\nx,a.tif\nx,b.tif\n", "'x' appears twice"),
    ("slide_id,path\n../escape,a.tif\n", "line 2: slide id '../escape' is not a usable folder name"),
    ("path\n\n", "no slides found"),
    ("path,label\n ,1\n", "line 2: empty `path`"),
])
def test_bad_manifest_names_file_and_problem(tmp_path: Path, csv_text: str, problem: str) -> None:
    manifest = _write(tmp_path / "m.csv", csv_text)
    with pytest.raises(ArchiveError, match=problem) as info:
        read_archive(manifest, CLASSES)
    assert str(manifest) in str(info.value)


def test_empty_folder_and_unknown_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no slides found"):
        read_archive(tmp_path)
    with pytest.raises(ArchiveError, match=r"not a manifest \.csv nor a folder"):
        read_archive(_write(tmp_path / "list.txt", "a.svs\n"))
    with pytest.raises(ArchiveError, match="cannot read the manifest"):
        read_archive(tmp_path / "missing.csv")


@pytest.mark.parametrize("slide_id", ["../escape", "a/b", ".hidden", "", "a b"])
def test_slide_ids_are_folder_names(slide_id: str) -> None:
    with pytest.raises(ArchiveError, match=r"--slide-id: slide id .* is not a usable folder name"):
        check_slide_id(slide_id, "--slide-id")
    assert check_slide_id("sample_000.v2-a", "--slide-id") == "sample_000.v2-a"


def test_train_refuses_an_escaping_id_and_a_label_beyond_the_classes(tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    for text, problem in (("slide_id,path,label\n../escape,a.tif,1\n", "not a usable folder name"),
                          ("slide_id,path,label\na,a.tif,2\n", "label '2' is neither")):
        manifest = _write(tmp_path / "m.csv", text)
        with pytest.raises(ArchiveError, match=problem):
            train(manifest, tmp_path / "model", TrainConfig(epochs=1), stores=stores)
    assert not stores.exists() and not (tmp_path / "escape").exists()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    config = ModelConfig(classes=CLASSES)
    return save_model(build_model(config), config, tmp_path / "model")


@pytest.mark.parametrize(("text", "problem"), [
    ("slide_id,path,label\n../escape,a.tif,1\n", "not a usable folder name"),
    ("path,label\na.tif,2\n", "label '2' is neither"),
    ("path,label\na.tif,-1\n", "label '-1' is neither"),
])
def test_run_refuses_the_archive_before_anything_runs(tmp_path: Path, model_dir: Path, text: str,
                                                      problem: str) -> None:
    manifest = _write(tmp_path / "m.csv", text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(manifest), "--model", str(model_dir), "--out", str(out)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert problem in result.output and str(manifest) in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_slides_command_lists_what_run_reads(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.csv", "slide_id,path,label\ns1,x/one.svs,lesion\n,x/two.tiff,0\n")
    out = tmp_path / "out"
    _write(out / "slides" / "s1" / "audit.json", "{}")
    _write(out / "slides" / "two" / "failure.json", "{}")  # failed last time: new again
    runner = CliRunner()
    listed = runner.invoke(main, ["slides", str(manifest)])
    assert listed.exit_code == 0 and listed.output.split() == ["s1", "two"]
    new = runner.invoke(main, ["slides", str(manifest), "--out", str(out), "--new", "--json"])
    assert new.exit_code == 0 and json.loads(new.output) == ["two"]
    assert runner.invoke(main, ["slides", str(manifest), "--new"]).exit_code == EXIT_USAGE
    bad = runner.invoke(main, ["slides", str(_write(tmp_path / "bad.csv", "slide,file\na,a.svs\n"))])
    assert bad.exit_code == EXIT_USAGE and "bad.csv: no `path` column" in bad.output
