"""Checks before Dask starts, so that every problem is listed at once, within seconds.

The methods must be registered (`explain.methods`, which imports them and torch: reading a config
does not), the model must load, fit the settings (`--target-class` among its classes;
`--target` is checked when the config is built) and give finite slide logits and attention on
one batch of random patches; `--lesion-classes` / `--exclude-classes`, when given, must match a
class of the archive's annotations: otherwise ConfigError (exit 2), nothing runs, nothing is
tiled. Each slide must open with OpenSlide at a plausible resolution and give the pixels of one
region (a damaged file fails here, naming OpenSlide's error), and each of its annotation files
must parse and fit the slide at its declared scale (`tiling.annotation_fit`): a slide that does
not is that slide's failure (stage "preflight"), the others go on, and no time is spent tiling it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from explainers.methods.registry import parse_methods
from explainers.models.config import ModelConfig
from explainers.models.inputs import normalise
from explainers.models.io import load_model
from explainers.models.mil import MILModel
from pipeline.config import PipelineConfig
from pipeline.failures import group_failures, group_line
from pipeline.stages import PREFLIGHT
from tiling.annotations import ROLES
from tiling.archive import SlideRecord
from tiling.config import StitchConfig
from tiling.errors import AuditError, ConfigError
from tiling.slide import open_slide
from tiling.stitch import AnnotationScale, lesion_rules, slide_lesions

log = logging.getLogger(__name__)
REGION = 512  # level-0 px a side of the region read at each slide's centre
PROBE_BATCH = 2  # random patches in the model's test forward (`probe_forward`)


def probe_forward(model: MILModel, config: ModelConfig, model_dir: Path) -> None:
    """ConfigError when the slide logits or attention of one bag of PROBE_BATCH random patches
    (seeded uniform RGB, normalised as store patches are) hold NaN or ±Inf."""
    pixels = torch.randint(0, 256, (PROBE_BATCH, 3, config.patch, config.patch), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = dict(zip(("slide logits", "attention"), model(normalise(pixels, config, torch.device("cpu"))),
                           strict=True))
    bad = [name for name, values in outputs.items() if not bool(torch.isfinite(values).all())]
    if bad:
        raise ConfigError(f"{model_dir}: the model's {' and '.join(bad)} on a test batch of random patches "
                          "are NaN or infinite; check its weights (NaN after training?) and its mean/std; "
                          "no slide was tiled")


def check_model(model_dir: Path, config: PipelineConfig) -> None:
    """ConfigError naming the unknown methods, or the model folder when it does not load, lacks
    the target class or gives non-finite outputs (`probe_forward`)."""
    parse_methods(config.explain.methods, "explain.methods", allow_empty=True)
    try:
        model, model_config = load_model(model_dir)
    except AuditError as exc:
        raise ConfigError(f"the model does not load: {exc}") from exc
    target = config.explain.target_class
    if target is not None and target >= len(model_config.classes):
        raise ConfigError(f"explain.target_class = {target}: model {model_dir} has classes {model_config.classes} "
                          f"(indices 0-{len(model_config.classes) - 1})")
    probe_forward(model, model_config, model_dir)


def check_classes(found: dict[str, set[str]], stitch: StitchConfig) -> None:
    """ConfigError listing the classes found when stitch.lesion_classes (given) made no annotation
    a lesion, or stitch.exclude_classes (given, not the default) made none an exclusion; `found`:
    the classes of the archive's annotation files by role (`tiling.annotations.read_classified`)."""
    present = ", ".join(sorted(set().union(*found.values()))) or "none"
    for key, names, role, flag in (("lesion_classes", stitch.lesion_classes, "lesion", "--lesion-classes"),
                                   ("exclude_classes", stitch.exclude_classes, "exclusion", "--exclude-classes")):
        given = names and (key == "lesion_classes" or names != StitchConfig().exclude_classes)
        if given and present != "none" and not found[role]:
            raise ConfigError(f"stitch.{key} = {','.join(names)}: matches no annotation class of the archive "
                              f"(classes found: {present}); fix {flag}")


def slide_problem(record: SlideRecord, config: PipelineConfig,
                  found: dict[str, set[str]] | None = None) -> AuditError | None:
    """Why the slide cannot be audited (it does not open, a region at its centre cannot be read,
    an annotation does not parse or does not fit it), or None; adds its annotation classes by
    role to `found`."""
    try:
        mpp = record.mpp if record.mpp is not None else config.tile.slide_mpp
        with open_slide(record.path, mpp, "manifest" if record.mpp is not None else "flag") as slide:
            width, height = slide.dimensions
            side = min(REGION, width, height)
            slide.read_region(((width - side) // 2, (height - side) // 2), 0, (side, side))
            _, info = slide_lesions(list(record.annotations), slide.dimensions, slide.mpp,
                                    AnnotationScale(record.annotation_downsample, record.annotation_mpp),
                                    lesion_rules(config.stitch))
    except AuditError as exc:
        return exc
    if found is not None:
        for role, names in info["annotation_classes"].items():
            found[role].update(names)
    return None


def preflight(records: Sequence[SlideRecord], model_dir: Path, config: PipelineConfig,
              threads: int = 8) -> dict[str, AuditError]:
    """{slide_id: problem} over `records` (checked on `threads` threads), logged one line per
    reason (`pipeline.failures`); raises ConfigError first when the model cannot run
    (`check_model`), after the slides when the class options match nothing (`check_classes`)."""
    check_model(model_dir, config)
    found: dict[str, set[str]] = {role: set() for role in ROLES}
    with ThreadPoolExecutor(threads) as pool:
        problems = dict(zip([r.slide_id for r in records],
                            pool.map(lambda r: slide_problem(r, config, found), records), strict=True))
    check_classes(found, config.stitch)
    found_problems = {sid: exc for sid, exc in problems.items() if exc is not None}
    failures = [{"slide_id": r.slide_id, "source_path": str(r.path), "stage": PREFLIGHT,
                 "error_type": type(found_problems[r.slide_id]).__name__, "message": str(found_problems[r.slide_id])}
                for r in records if r.slide_id in found_problems]
    for group in group_failures(failures):  # one line per reason, however many slides
        log.error("%s", group_line(group))
    return found_problems
