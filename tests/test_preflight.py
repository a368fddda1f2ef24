"""Preflight fails a slide before any work when its pixels cannot be read or its annotations do
not fit it, naming the file and what to do; a sound slide passes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.config import PipelineConfig
from pipeline.preflight import slide_problem
from tiling.archive import SlideRecord
from tiling.errors import AnnotationError, SlideError
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
