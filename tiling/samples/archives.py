"""Sample slide archives: the CI validation data and the demo's input.

`write_sample_archive(outdir, slides, seed)` writes, for slide i (id `sample_{i:03d}`):
`sample_i.tiff` (pyramidal tiled JPEG TIFF, level-0 µm/px `mpp`, default 0.5), `sample_i.geojson` and
`sample_i.xml` (its lesions; negatives get files with no annotation), and `manifest.csv` with
columns slide_id, path, label, annotation, annotation_xml, ink (paths relative to the
manifest's folder). Even indices are positive (label 1, 1-3 lesions), odd ones negative.
Pen ink marks slides 0, 1, 4, 5, 8, 9, ... (both labels alike), or with `ink_correlated` the
positive slides only. Every slide has a tissue fold. `lesion_contrast` in (0, 1] makes lesions
subtle (`tiling.samples.draw.draw_slide`; 1 = today's conspicuous lesions), so that a model
trained on ink-correlated slides prefers the ink. Slide i depends only on (seed, i, size,
ink_correlated, mpp, lesion_contrast, ink_width_um): the same arguments write the same bytes;
`ink_width_um` (µm, drawn per slide) widens the pen stroke into a filled band.
`write_large_archive` writes the same files for 40x-size slides (80,000 px wide at 0.25 µm/px by
default, `tiling.samples.large`).
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

from tiling.samples.annotations import lesions_asap_xml, lesions_geojson
from tiling.samples.draw import INK_WIDTH_UM, draw_slide
from tiling.samples.large import write_large_slide
from tiling.samples.tiff import write_pyramid_tiff
from tiling.store import atomic_path, config_hash, is_current

log = logging.getLogger(__name__)

DEFAULT_SIZE = 8192  # level-0 width in px: ~150-200 tissue patches at mpp 1.0, patch 224
SLIDE_MPP = 0.5
LARGE_SIZE, LARGE_MPP = 80_000, 0.25  # a 40x slide: 80,000 x 60,000 px at 0.25 µm/px
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
    ink_width_um: tuple[float, float] = INK_WIDTH_UM

    def shape_hw(self) -> tuple[int, int]:
        return slide_shape(self.size)


@dataclass(frozen=True)
class LargeSampleConfig:
    """What an archive of 40x-size slides (`tiling.samples.large`) depends on. size: level-0
    width in px (height 3/4 of it), both rounded up to a multiple of 64; mpp: level-0 µm/px."""

    slides: int
    seed: int
    size: int = LARGE_SIZE
    mpp: float = LARGE_MPP

    def shape_hw(self) -> tuple[int, int]:
        return slide_shape(self.size)


def slide_shape(size: int) -> tuple[int, int]:
    """Level-0 (height, width) in px of a sample slide `size` px wide: (3/4 size, size), both
    rounded up to a multiple of 64."""
    return 64 * math.ceil(size * 3 / 4 / 64), 64 * math.ceil(size / 64)


def _write_slide(outdir: Path, index: int, config: SampleConfig | LargeSampleConfig) -> dict[str, str | int]:
    """Draw slide `index` and write its TIFF and annotations: a SampleConfig slide is drawn at
    level 1 (2 x level-0 mpp) and stored with its 2x upsample as level 0; a LargeSampleConfig
    one is a tile mosaic (`tiling.samples.large`)."""
    slide_id = f"sample_{index:03d}"
    label = 1 if index % 2 == 0 else 0
    ink = isinstance(config, SampleConfig) and (bool(label) if config.ink_correlated else (index // 2) % 2 == 0)
    height, width = config.shape_hw()
    rng = np.random.default_rng([config.seed, index])
    description = f"slideaudit sample slide {slide_id}, seed {config.seed}"
    files = {"path": f"{slide_id}.tiff", "annotation": f"{slide_id}.geojson",
             "annotation_xml": f"{slide_id}.xml"}
    with atomic_path(outdir / files["path"]) as tmp:
        if isinstance(config, LargeSampleConfig):
            lesions = write_large_slide(tmp, rng, (height, width), config.mpp, bool(label), description)
        else:
            drawing = draw_slide(rng, (height // 2, width // 2), px_um=2 * config.mpp, downsample=2.0,
                                 positive=bool(label), ink=ink, lesion_contrast=config.lesion_contrast,
                                 ink_width_um=config.ink_width_um)
            write_pyramid_tiff(tmp, drawing.image, config.mpp, upsample_first=True, description=description)
            lesions = drawing.lesions
    for key, text in (("annotation", lesions_geojson(lesions)), ("annotation_xml", lesions_asap_xml(lesions))):
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
                         lesion_contrast: float = 1.0, ink_width_um: tuple[float, float] = INK_WIDTH_UM) -> Path:
    """Write `slides` sample slides, their annotations and the manifest (module docstring).

    Slides are drawn on one thread per core (numpy, scipy, Pillow and the JPEG encoder release
    the GIL). Returns outdir/manifest.csv; a rerun with the same arguments whose files are all
    present returns at once (stamp in outdir/sample.json).
    """
    low, high = ink_width_um
    return _write_archive(outdir, SampleConfig(slides, seed, size, ink_correlated, mpp, lesion_contrast, (low, high)))


def write_large_archive(outdir: Path, slides: int, seed: int, size: int = LARGE_SIZE,
                        mpp: float = LARGE_MPP) -> Path:
    """Like `write_sample_archive`, with 40x-size slides (`tiling.samples.large`): `size` px wide
    at `mpp` µm/px, about a third tissue, no pen ink; each slide in seconds, not minutes."""
    return _write_archive(outdir, LargeSampleConfig(slides, seed, size, mpp))


def _write_archive(outdir: Path, config: SampleConfig | LargeSampleConfig) -> Path:
    """Write the archive of `config` (see `write_sample_archive`)."""
    if config.slides < 1 or config.size < 512:
        raise ValueError(f"need at least 1 slide of at least 512 px, got {config.slides} of {config.size} px")
    if isinstance(config, SampleConfig) and not 0 < config.lesion_contrast <= 1:
        raise ValueError(f"lesion contrast must lie in (0, 1], got {config.lesion_contrast}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = config_hash(config)
    if _complete(outdir, stamp):
        log.info("%s: sample archive up to date", outdir / MANIFEST)
        return outdir / MANIFEST
    with ThreadPoolExecutor(min(config.slides, os.cpu_count() or 1)) as pool:
        jobs = pool.map(_write_slide, [outdir] * config.slides, range(config.slides), [config] * config.slides)
        rows = list(tqdm(jobs, total=config.slides, desc="sample slides", unit="slide"))
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
