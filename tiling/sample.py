"""Sample slide archives: the CI validation data and the demo's input.

`write_sample_archive(outdir, slides, seed)` writes, for slide i (id `sample_{i:03d}`):
`sample_i.tiff` (pyramidal tiled JPEG TIFF, level-0 µm/px `mpp`, default 0.5), `sample_i.geojson` and
`sample_i.xml` (its lesions; negatives get files with no annotation), and `manifest.csv` with
columns slide_id, path, label, annotation, annotation_xml, ink (paths relative to the
manifest's folder). Even indices are positive (label 1, 1-3 lesions), odd ones negative.
Pen ink marks slides 0, 1, 4, 5, 8, 9, ... (both labels alike), or with `ink_correlated` the
positive slides only. Every slide has a tissue fold. `lesion_contrast` in (0, 1] makes lesions
subtle (`tiling.sample_draw.draw_slide`; 1 = today's conspicuous lesions), so that a model
trained on ink-correlated slides prefers the ink. Slide i depends only on (seed, i, size,
ink_correlated, mpp, lesion_contrast): the same arguments write the same bytes.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tiling.sample_annotations import lesions_asap_xml, lesions_geojson
from tiling.sample_draw import draw_slide
from tiling.sample_tiff import write_pyramid_tiff
from tiling.store import atomic_path, config_hash, is_current

log = logging.getLogger(__name__)

DEFAULT_SIZE = 8192  # level-0 width in px: ~150-200 tissue patches at mpp 1.0, patch 224
SLIDE_MPP = 0.5
MANIFEST, STAMP = "manifest.csv", "sample.json"
COLUMNS = ("slide_id", "path", "label", "annotation", "annotation_xml", "ink")
GENERATED = "generated"  # the stamp's source_sha256: a sample archive has no source file


@dataclass(frozen=True)
class SampleConfig:
    """What a sample archive depends on. size: level-0 width in px (height 3/4 of it), both
    rounded up to a multiple of 64."""

    slides: int
    seed: int
    size: int = DEFAULT_SIZE
    ink_correlated: bool = False
    mpp: float = SLIDE_MPP
    lesion_contrast: float = 1.0

    def shape_hw(self) -> tuple[int, int]:
        """Level-0 (height, width) in px."""
        return 64 * math.ceil(self.size * 3 / 4 / 64), 64 * math.ceil(self.size / 64)


def _write_slide(outdir: Path, index: int, config: SampleConfig) -> dict[str, str | int]:
    """Draw slide `index` at level 1 (2 x level-0 mpp) and write its TIFF and annotations."""
    slide_id = f"sample_{index:03d}"
    label = 1 if index % 2 == 0 else 0
    ink = bool(label) if config.ink_correlated else (index // 2) % 2 == 0
    height, width = config.shape_hw()
    drawing = draw_slide(np.random.default_rng([config.seed, index]), (height // 2, width // 2),
                         px_um=2 * config.mpp, downsample=2.0, positive=bool(label), ink=ink,
                         lesion_contrast=config.lesion_contrast)
    files = {"path": f"{slide_id}.tiff", "annotation": f"{slide_id}.geojson",
             "annotation_xml": f"{slide_id}.xml"}
    with atomic_path(outdir / files["path"]) as tmp:
        write_pyramid_tiff(tmp, drawing.image, config.mpp, upsample_first=True,
                           description=f"slideaudit sample slide {slide_id}, seed {config.seed}")
    for key, text in (("annotation", lesions_geojson(drawing.lesions)),
                      ("annotation_xml", lesions_asap_xml(drawing.lesions))):
        with atomic_path(outdir / files[key]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return {"slide_id": slide_id, **files, "label": label, "ink": int(ink)}


def _complete(outdir: Path, stamp: str) -> bool:
    """True when the archive was written with this config and none of its files is missing."""
    manifest = outdir / MANIFEST
    if not (is_current(outdir / STAMP, stamp, GENERATED) and manifest.is_file()):
        return False
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return all((outdir / row[k]).is_file() for row in rows for k in ("path", "annotation", "annotation_xml"))


def write_sample_archive(outdir: Path, slides: int, seed: int, size: int = DEFAULT_SIZE,
                         ink_correlated: bool = False, mpp: float = SLIDE_MPP,
                         lesion_contrast: float = 1.0) -> Path:
    """Write `slides` sample slides, their annotations and the manifest (module docstring).

    Slides are drawn on one thread per core (numpy, scipy, Pillow and the JPEG encoder release
    the GIL). Returns outdir/manifest.csv; a rerun with the same arguments whose files are all
    present returns at once (stamp in outdir/sample.json).
    """
    if slides < 1 or size < 512:
        raise ValueError(f"need at least 1 slide of at least 512 px, got {slides} of {size} px")
    if not 0 < lesion_contrast <= 1:
        raise ValueError(f"lesion contrast must lie in (0, 1], got {lesion_contrast}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    config = SampleConfig(slides, seed, size, ink_correlated, mpp, lesion_contrast)
    stamp = config_hash(config)
    if _complete(outdir, stamp):
        log.info("%s: sample archive up to date", outdir / MANIFEST)
        return outdir / MANIFEST
    with ThreadPoolExecutor(min(slides, os.cpu_count() or 1)) as pool:
        jobs = pool.map(_write_slide, [outdir] * slides, range(slides), [config] * slides)
        rows = list(tqdm(jobs, total=slides, desc="sample slides", unit="slide"))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(outdir / MANIFEST) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    with atomic_path(outdir / STAMP) as tmp:
        tmp.write_text(json.dumps({"stamp": {"config_hash": stamp, "source_sha256": GENERATED},
                                   "config": asdict(config)}, indent=1), encoding="utf-8")
    return outdir / MANIFEST
