"""Checks before Dask starts, so that every problem is listed at once, within seconds.

The methods must be registered (`explain.methods`, which imports them and torch: reading a config
does not) and the model must load and fit the settings (`--target-class` among its classes;
`--target` is checked when the config is built): otherwise ConfigError, nothing runs. Each
slide must open with OpenSlide at a plausible resolution and give the pixels of one region (a
damaged file fails here, naming OpenSlide's error), and each of its annotation files must parse
and fit the slide at its declared scale (`tiling.annotation_fit`): a slide that does not is that
slide's failure (stage "preflight"), the others go on, and no time is spent tiling it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from explainers.methods.registry import parse_methods
from explainers.models.io import load_model
from pipeline.config import PipelineConfig
from tiling.archive import SlideRecord
from tiling.errors import AuditError, ConfigError
from tiling.slide import open_slide
from tiling.stitch import AnnotationScale, lesion_rules, slide_lesions

log = logging.getLogger(__name__)
REGION = 512  # level-0 px a side of the region read at each slide's centre


def check_model(model_dir: Path, config: PipelineConfig) -> None:
    """ConfigError naming the unknown methods, or the model folder when it does not load or lacks
    the target class."""
    parse_methods(config.explain.methods, "explain.methods", allow_empty=True)
    try:
        _, model = load_model(model_dir)
    except AuditError as exc:
        raise ConfigError(f"the model does not load: {exc}") from exc
    target = config.explain.target_class
    if target is not None and target >= len(model.classes):
        raise ConfigError(f"explain.target_class = {target}: model {model_dir} has classes {model.classes} "
                          f"(indices 0-{len(model.classes) - 1})")


def slide_problem(record: SlideRecord, config: PipelineConfig) -> AuditError | None:
    """Why the slide cannot be audited (it does not open, a region at its centre cannot be read,
    an annotation does not parse or does not fit it), or None."""
    try:
        mpp = record.mpp if record.mpp is not None else config.tile.slide_mpp
        with open_slide(record.path, mpp, "manifest" if record.mpp is not None else "flag") as slide:
            width, height = slide.dimensions
            side = min(REGION, width, height)
            slide.read_region(((width - side) // 2, (height - side) // 2), 0, (side, side))
            slide_lesions(list(record.annotations), slide.dimensions, slide.mpp,
                          AnnotationScale(record.annotation_downsample, record.annotation_mpp),
                          lesion_rules(config.stitch))
    except AuditError as exc:
        return exc
    return None


def preflight(records: Sequence[SlideRecord], model_dir: Path, config: PipelineConfig,
              threads: int = 8) -> dict[str, AuditError]:
    """{slide_id: problem} over `records` (checked on `threads` threads), each logged; raises
    ConfigError first when the model cannot run (`check_model`)."""
    check_model(model_dir, config)
    with ThreadPoolExecutor(threads) as pool:
        problems = dict(zip([r.slide_id for r in records], pool.map(lambda r: slide_problem(r, config), records),
                            strict=True))
    found = {sid: exc for sid, exc in problems.items() if exc is not None}
    for sid, exc in found.items():
        log.error("%s: %s", sid, exc)
    return found
