"""Small, real stores with known values for the stitch / audit / report tests.

patches.zarr is the real tiler's output for the real CMU-1-Small-Region slide;
explain.zarr is written by hand: attention and CAM maps that peak where we put a lesion, so
every expected number is known. Both follow the documented store layout.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from conftest import shared_file
from tiling.config import TileConfig
from tiling.slide import open_slide
from tiling.store import EXPLAIN, FAILURE, PATCHES, config_hash
from tiling.store.explain import ExplainWriter
from tiling.store.records import write_failure_record
from tiling.tile import tile_slide

PATCH = 32          # px at the patch mpp
ZOOM = 8            # level-0 px per patch px: footprint 256 level-0 px
CLASSES = ["normal", "tumor"]


def real_slide() -> Path:
    """The real Aperio slide of the shared test data (fails the test clearly when missing)."""
    return shared_file("CMU-1-Small-Region.svs")


def lesion_geojson(path: Path, rings: list[list[tuple[float, float]]], name: str = "Tumor") -> Path:
    """A QuPath GeoJSON FeatureCollection of lesion polygons (level-0 px)."""
    features = [{"type": "Feature", "properties": {"objectType": "annotation",
                                                   "name": f"{name} {i + 1}",
                                                   "classification": {"name": "Tumor"}},
                 "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]
                                                                 + [list(ring[0])]]}}
                for i, ring in enumerate(rings)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_patch_store(out: Path, slide: Path, slide_id: str, folder: str) -> dict:
    """patches.zarr of `slide` by the real tiler: PATCH px patches at ZOOM x its mpp, in
    out/slides/<folder>; its attrs then name `slide_id` (which need not be a folder name)."""
    with open_slide(slide) as s:
        mpp = s.mpp * ZOOM
    path = tile_slide(slide, out, TileConfig(mpp=mpp, patch=PATCH, min_tissue=0.3, chunk=16),
                      slide_id=folder)
    group = zarr.open_group(path, mode="r+")
    group.attrs["slide_id"] = slide_id
    return dict(group.attrs)


def bump(coords: np.ndarray, footprint: float, centre: tuple[float, float], sigma: float,
         cells: int) -> np.ndarray:
    """(N, cells, cells) Gaussian bump exp(-d²/2σ²) around level-0 `centre`, sampled at the
    cell centres of every patch."""
    offsets = (np.arange(cells) + 0.5) / cells * footprint
    xs = coords[:, 0, None, None] + offsets[None, None, :]
    ys = coords[:, 1, None, None] + offsets[None, :, None]
    d2 = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2
    return np.exp(-d2 / (2 * sigma ** 2)).astype(np.float32)


def write_explain_store(slide_dir: Path, patch_attrs: dict, centre: tuple[float, float],
                        elsewhere: tuple[float, float], logits: tuple[float, float] = (-1.0, 2.0),
                        attention: np.ndarray | None = None) -> dict:
    """explain.zarr: attention and `gradcam` peak at `centre`, `hirescam` at `elsewhere`."""
    coords = np.asarray(zarr.open_group(slide_dir / PATCHES, mode="r")["coords"][:])
    footprint = float(patch_attrs["footprint"])
    centres = coords + footprint / 2
    if attention is None:
        d2 = ((centres - np.asarray(centre)) ** 2).sum(axis=1)
        score = -d2 / (2 * 300.0 ** 2)
        attention = np.exp(score - score.max())
        attention /= attention.sum()
    methods = ["gradcam", "hirescam"]
    attrs = {"classes": CLASSES, "head": "softmax", "target": "slide", "target_class": 1, "mil": "amil",
             "attention_branch": 0, "methods": methods,
             "model": {"name": "fake-amil", "sha256": "0" * 64,
                       "config": {"encoder": "small_cnn", "classes": CLASSES}},
             "config_hash": config_hash({"fake": "explain", "up": patch_attrs["config_hash"]}),
             "source_sha256": patch_attrs["source_sha256"]}
    writer = ExplainWriter(slide_dir / EXPLAIN, len(coords), max(1, len(coords)))
    writer.array("attention", attention)
    writer.array("slide_logits", np.asarray(logits))
    writer.array("instance_logits", np.zeros((len(coords), 2)))
    writer.maps(0, len(coords), {"gradcam": bump(coords, footprint, centre, 300.0, 7),
                                 "hirescam": bump(coords, footprint, elsewhere, 300.0, 7)})
    writer.finish(attrs)
    return attrs


def make_slide_case(out: Path, slide_id: str, folder: str | None = None,
                    lesion: bool = True, logits: tuple[float, float] = (-1.0, 2.0),
                    attention: np.ndarray | None = None) -> tuple[Path, list[Path]]:
    """A slide folder under out/slides with patches.zarr and explain.zarr; the lesion is a
    square of 500 level-0 px around (1100, 1500) on the slide's tissue. Returns (slide_dir,
    annotation files)."""
    folder = folder or slide_id
    slide_dir = out / "slides" / folder
    attrs = write_patch_store(out, real_slide(), slide_id, folder)
    centre, elsewhere = (1100.0, 1500.0), (700.0, 2700.0)
    write_explain_store(slide_dir, attrs, centre, elsewhere, logits, attention)
    annotations = []
    if lesion:
        x, y = centre
        ring = [(x - 250, y - 250), (x + 250, y - 250), (x + 250, y + 250), (x - 250, y + 250)]
        annotations.append(lesion_geojson(out / f"{folder}.geojson", [ring]))
    return slide_dir, annotations


EVIL = "<script>alert(1)</script>"


def build_archive(out: Path) -> dict[str, Path]:
    """An archive of three slides run through stitch, audit and report, then the index:
    "positive" (label tumor, one lesion), "evil" (slide id EVIL, negative, label normal) and
    "broken" (a failure.json from the tile stage)."""
    from reports.audit.config import AuditConfig
    from reports.audit.stage import audit_slide
    from reports.html import render_index, render_slide_report
    from tiling.config import StitchConfig
    from tiling.stitch import stitch_slide

    folders = {}
    for folder, slide_id, lesion, label, logits in (
            ("positive", "CMU-1 positive", True, 1, (-1.0, 2.0)),
            ("evil", EVIL, False, 0, (2.0, -1.0))):
        slide_dir, annotations = make_slide_case(out, slide_id, folder, lesion, logits)
        stitch_slide(slide_dir, annotations, StitchConfig(max_side=512))
        audit_slide(slide_dir, label, AuditConfig())
        render_slide_report(slide_dir)
        folders[folder] = slide_dir
    broken = out / "slides" / "broken"
    broken.mkdir(parents=True)
    write_failure_record(broken / FAILURE, {
        "slide_id": "broken-slide", "stage": "tile", "label": None, "source_path": "broken.svs",
        "message": "broken.svs: not a slide format OpenSlide can read; convert it"})
    folders["broken"] = broken
    folders["index"], folders["csv"] = render_index(out)
    return folders


def clone_archive(out: Path, archive: dict[str, Path], audited: int, failed: dict[str, int]) -> Path:
    """An index-only archive under `out` of `audited` slides cloned from `build_archive`'s
    "positive" and "evil" audits in turn (audit.json with a new slide id, and the thumbnail of its
    report) and, per reason in `failed`, that many failure.json at the tile stage, each naming its
    own file. Enough to render the index of thousands of slides in seconds."""
    import shutil

    from tiling.store import AUDIT
    from tiling.store.names import ROW_THUMBNAIL

    for i in range(audited):
        source = archive[("positive", "evil")[i % 2]]
        folder = out / "slides" / f"clone_{i:05d}"
        folder.mkdir(parents=True)
        audit = json.loads((source / AUDIT).read_text())
        (folder / AUDIT).write_text(json.dumps({**audit, "slide_id": f"clone {i:05d}"}))
        shutil.copy(source / ROW_THUMBNAIL, folder / ROW_THUMBNAIL)
    for reason, n in failed.items():
        for i in range(n):
            folder = out / "slides" / f"failed_{reason[:8].replace(' ', '_')}_{i:05d}"
            folder.mkdir(parents=True)
            write_failure_record(folder / FAILURE, {
                "slide_id": folder.name, "stage": "tile", "label": i % 2, "source_path": f"/data/{folder.name}.svs",
                "message": f"/data/{folder.name}.svs: {reason}"})
    return out
