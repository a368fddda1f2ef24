"""Preflight fails a slide before any work when its pixels cannot be read or its annotations do
not fit it, naming the file and what to do; a sound slide passes. A model with NaN outputs, or
class options that match no annotation, stop the run (exit 2) before anything is tiled."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import PipelineConfig
from pipeline.errors import EXIT_USAGE
from pipeline.preflight import check_classes, check_model, slide_problem
from tiling.archive import SlideRecord
from tiling.config import StitchConfig
from tiling.errors import AnnotationError, ConfigError, SlideError
from tiling.samples.tiff import write_pyramid_tiff

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (2048, 2048, 3), np.uint8)  # noise: every JPEG tile holds data


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    path = tmp_path / "slide.tiff"
    write_pyramid_tiff(path, IMAGE, 0.5)
    return path


def square(side: float) -> dict:
    ring = [[0, 0], [side, 0], [side, side], [0, side], [0, 0]]
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"classification": {"name": "Tumor"}}}]}


def test_a_sound_slide_and_fitting_annotation_pass(slide: Path, tmp_path: Path) -> None:
    notes = tmp_path / "fits.geojson"
    notes.write_text(json.dumps(square(1000)))
    assert slide_problem(SlideRecord("s", slide, (1,), (notes,)), PipelineConfig()) is None


def test_an_annotation_at_another_levels_scale_fails_at_preflight(slide: Path, tmp_path: Path) -> None:
    notes = tmp_path / "level2.geojson"
    notes.write_text(json.dumps(square(8000)))   # 4x the slide's 2048 px: drawn on a level-2 grid's scale
    problem = slide_problem(SlideRecord("s", slide, (1,), (notes,)), PipelineConfig())
    assert isinstance(problem, AnnotationError)
    assert str(problem).startswith(f"{notes}: ") and "annotation_downsample=4" in str(problem)
    declared = SlideRecord("s", slide, (1,), (notes,), annotation_downsample=4.0)
    assert slide_problem(declared, PipelineConfig()) is None


def test_a_slide_whose_tiles_are_damaged_fails_at_preflight_as_corrupt(slide: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tiff"
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            data[offset + 2:offset + count] = bytes(count - 2)  # JPEG markers zeroed: undecodable
    damaged.write_bytes(bytes(data))
    problem = slide_problem(SlideRecord("d", damaged), PipelineConfig())
    assert isinstance(problem, SlideError)
    assert str(problem).startswith(f"{damaged}: ") and "corrupt" in str(problem)


def nan_model(model_dir: Path, to: Path) -> Path:
    """A copy of `model_dir` whose attention weights are NaN (it loads; its outputs are NaN)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, to)
    state = load_file(str(to / "model.safetensors"))
    state["attention.w.weight"] = torch.full_like(state["attention.w.weight"], float("nan"))
    save_file(state, str(to / "model.safetensors"))
    return to


def test_a_model_with_nan_outputs_stops_the_run_before_any_slide_is_tiled(
        sample_archive: Path, model_dir: Path, tmp_path: Path) -> None:
    broken = nan_model(model_dir, tmp_path / "nan")
    with pytest.raises(ConfigError, match=rf"{broken}: the model's slide logits and attention on a test batch "
                                          r".* NaN or infinite"):
        check_model(broken, PipelineConfig())
    check_model(model_dir, PipelineConfig())  # the sound model passes
    result = CliRunner().invoke(main, ["run", str(sample_archive), "--model", str(broken),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == EXIT_USAGE and "no slide was tiled" in result.output
    assert not (tmp_path / "o" / "slides").exists()


@pytest.mark.parametrize(("option", "value"), [("--lesion-classes", "Carcinoma"), ("--exclude-classes", "Blank")])
def test_class_options_matching_no_annotation_exit_2_listing_the_classes_found(
        slide: Path, model_dir: Path, tmp_path: Path, option: str, value: str) -> None:
    notes = tmp_path / "slide.geojson"
    notes.write_text(json.dumps(square(1000)))  # one "Tumor" lesion
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_id,path,label,annotation,mpp\ns,{slide},,{notes},0.5\n")
    result = CliRunner().invoke(main, ["run", str(manifest), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                                       option, value])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"= {value}: matches no annotation class of the archive (classes found: Tumor); fix {option}" \
        in result.output
    assert not (tmp_path / "o" / "slides").exists()
    found = {"lesion": {"Tumor"}, "exclusion": set(), "ignored": set()}
    check_classes(found, StitchConfig(lesion_classes=("tum*",)))  # a class that matches passes
    check_classes({"lesion": set(), "exclusion": set(), "ignored": set()},
                  StitchConfig(lesion_classes=("x",)))  # no annotations at all: nothing to check
