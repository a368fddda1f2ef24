"""Annotation cost bounded by pixels: a scanline fill, a vertex limit and a per-stage time limit."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import polygon as skimage_polygon

from fake_stores import make_slide_case
from pipeline.config import PipelineConfig, RunSettings
from pipeline.errors import StageTimeout
from pipeline.limits import time_limit
from pipeline.stages import Context, SlideState, run_stage
from tiling.annotations import scanline_fill
from tiling.archive import SlideRecord
from tiling.config import StitchConfig
from tiling.errors import AnnotationError
from tiling.stitch import stitch_slide
from tiling.store import FAILURE
from tiling.store.maps import open_maps

CENTRE, RADIUS = (1100.0, 1500.0), 250.0


def wiggly_circle(path: Path, vertices: int) -> Path:
    """A QuPath GeoJSON lesion: a circle of RADIUS level-0 px around CENTRE whose radius wiggles
    by ±4 px, with `vertices` vertices."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = RADIUS + 4 * np.sin(t * 997)
    ring = np.round(np.column_stack([CENTRE[0] + r * np.cos(t), CENTRE[1] + r * np.sin(t)]), 2).tolist()
    feature = {"type": "Feature", "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
               "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_the_scanline_fill_equals_a_point_in_polygon_test() -> None:
    """Random real coordinates: no pixel centre lies exactly on an outline, where the rules differ."""
    rng = np.random.default_rng(0)
    for k in range(150):
        n = int(rng.integers(3, 60))
        if k % 3:  # star-shaped, partly outside the box
            t, radius = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(2, 45, n)
            rows, cols = 50 + radius * np.sin(t) + rng.uniform(-30, 30), 45 + radius * np.cos(t)
        else:  # self-intersecting
            rows, cols = rng.uniform(-10, 110, n), rng.uniform(-10, 100, n)
        expected = np.zeros((100, 90), bool)
        expected[skimage_polygon(rows, cols, (100, 90))] = True
        np.testing.assert_array_equal(scanline_fill(rows, cols, (100, 90)), expected)


def test_a_million_vertex_lesion_stitches_in_seconds(tmp_path: Path) -> None:
    slide_dir, _ = make_slide_case(tmp_path, "cmu", lesion=False)
    annotation = wiggly_circle(tmp_path / "million.geojson", 1_000_000)
    start = time.process_time()  # CPU s of this process: the 2-core test machine is shared
    stitch_slide(slide_dir, [annotation], StitchConfig(max_side=512))
    seconds = time.process_time() - start
    assert seconds < 10, f"stitch took {seconds:.1f} s of CPU"
    lesion = open_maps(slide_dir).lesion  # D = 6 level-0 px per map px
    assert (lesion == 1).sum() == pytest.approx(np.pi * (RADIUS / 6) ** 2, rel=0.05)
    assert lesion[round(CENTRE[1] / 6), round(CENTRE[0] / 6)] == 1


def run_stitch(out: Path, slide_id: str, annotation: Path, config: PipelineConfig) -> SlideState:
    record = SlideRecord(slide_id, out / f"{slide_id}.svs", annotations=(annotation,))
    return run_stage("stitch", SlideState(record), Context(out, out, config))


def test_a_polygon_over_the_vertex_limit_fails_its_slide_naming_file_and_limit(tmp_path: Path) -> None:
    make_slide_case(tmp_path, "many", lesion=False)
    _, (few,) = make_slide_case(tmp_path, "few")
    many = wiggly_circle(tmp_path / "many.geojson", 5000)
    with pytest.raises(AnnotationError, match=r"5,001 vertices, over the limit of 4,000.*stitch.max_vertices"):
        stitch_slide(tmp_path / "slides" / "many", [many], StitchConfig(max_side=512, max_vertices=4000))
    config = PipelineConfig(stitch=StitchConfig(max_side=512, max_vertices=4000))
    failed = run_stitch(tmp_path, "many", many, config)
    assert failed.failure is not None and failed.failure["stage"] == "stitch"
    assert str(many) in failed.failure["message"] and "4,000" in failed.failure["message"]
    assert json.loads((tmp_path / "slides" / "many" / FAILURE).read_text())["error_type"] == "AnnotationError"
    assert run_stitch(tmp_path, "few", few, config).failure is None


def test_a_stage_over_its_time_limit_fails_only_that_slide(tmp_path: Path) -> None:
    make_slide_case(tmp_path, "slow", lesion=False)
    _, (quick,) = make_slide_case(tmp_path, "quick")
    slow = wiggly_circle(tmp_path / "slow.geojson", 1_000_000)  # parsing alone takes seconds
    config = PipelineConfig(stitch=StitchConfig(max_side=512), run=RunSettings(stage_timeout=1.0))
    failed = run_stitch(tmp_path, "slow", slow, config)  # stopped after json.loads, one C call
    assert failed.failure is not None and failed.failure["error_type"] == "StageTimeout"
    assert "slow: the stitch stage ran past its limit of 1 s" in failed.failure["message"]
    assert "run.stage_timeout" in failed.failure["message"]
    # no half-written maps left (whole ones only where the timeout landed in code that swallowed it)
    assert not [p for p in (tmp_path / "slides" / "slow").glob("maps.zarr*") if p.name != "maps.zarr"]
    done = run_stitch(tmp_path, "quick", quick, replace_timeout(config, 60.0))
    assert done.failure is None and done.stages == {"stitch": "computed"}


def replace_timeout(config: PipelineConfig, seconds: float) -> PipelineConfig:
    return PipelineConfig(stitch=config.stitch, run=RunSettings(stage_timeout=seconds))


def _busy_swallowing(swallowed: list[Exception]) -> None:
    """Ten seconds of bytecode under a handler that catches every exception, as a library's would."""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            pass
    except Exception as exc:
        swallowed.append(exc)


def test_a_timeout_swallowed_where_it_landed_still_fails_the_block() -> None:
    """Code that catches every exception (distributed's garbage-collector callback does) may catch
    the timeout: the block runs on, and StageTimeout is raised when it ends."""
    swallowed: list[Exception] = []
    with pytest.raises(StageTimeout, match=r"slow: the stitch stage ran past its limit of 0.2 s"), \
            time_limit(0.2, "slow: the stitch stage"):
        _busy_swallowing(swallowed)
    assert len(swallowed) == 1 and isinstance(swallowed[0], StageTimeout)
