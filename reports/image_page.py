"""The single-image page: what the model says about one region and where it looks for each class.

One self-contained HTML file (figures inlined as PNG data URIs, Jinja2 with autoescape) that
`slideaudit explain-image` writes next to the same figures as PNG files, and that
`slideaudit serve` returns for an upload. Maps are shown on a per-map display scale:
v = clip((m - min m) / (q99.5(m) - min m), 0, 1), so one hot pixel of a gradient map does not
wash the rest out; the raw values stay in the explanation.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.transform import resize

from explainers.feature_views import filter_grid
from explainers.methods.registry import default_methods, method
from explainers.models.io import load_model, model_sha256
from explainers.single_image import RegionConfig, RegionExplanation, explain_region, read_image
from reports.figures import colourise, display_shape, overlay, png_data_uri
from reports.html import environment
from tiling.store import atomic_path, config_hash, file_sha256, is_current

log = logging.getLogger(__name__)

PAGE, RESULT = "index.html", "result.json"
DISPLAY_SIDE = 512
VIEW_SIDE = 128
HIGH_QUANTILE = 99.5
ALL = "all"   # the form's method choice "every offered method" (a class x method grid)


@dataclass
class PageForm:
    """The upload form of `slideaudit serve`: choices and what was picked; image_id: the sha256
    of the upload the server keeps, so the form can be sent again without the file."""

    classes: list[str]
    methods: list[str]
    target: str = ""
    method: str = field(default_factory=lambda: default_methods("images")[0])
    mpp: str = ""
    image_id: str = ""
    max_upload_mb: float = 20.0
    model_mpp: float = 1.0


@dataclass
class PageInfo:
    """What the page says about its inputs."""

    source: str = ""
    model_name: str = ""
    model_sha256: str = ""
    reports_url: str | None = None
    notes: list[str] = field(default_factory=list)


def display_scale(m: np.ndarray) -> np.ndarray:
    """v = clip((m - min) / (q99.5 - min), 0, 1); a flat map is all 0."""
    lo, hi = float(np.nanmin(m)), float(np.nanpercentile(m, HIGH_QUANTILE))
    if not hi > lo:
        hi = float(np.nanmax(m))
    return np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m)


def _resized(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize(np.asarray(values, np.float64), shape, order=1, mode="edge", anti_aliasing=False)


def figures(result: RegionExplanation) -> dict[str, Any]:
    """RGB uint8 figures of a result: "image", {(class, method): overlay}, [(channel, mean, view)]."""
    shape = display_shape(result.image.shape[:2], DISPLAY_SIDE)
    image = np.asarray(Image.fromarray(result.image).resize(shape[::-1], Image.Resampling.LANCZOS))
    none = np.zeros(shape, bool)
    overlays = {(t.name, name): overlay(image, display_scale(_resized(m, shape)), none)
                for t in result.targets for name, m in t.maps.items()}
    view_shape = display_shape(result.activations.shape[1:], VIEW_SIDE)
    views = [(int(ch), float(result.activations[i].mean()),
              np.rint(colourise(display_scale(_resized(result.activations[i], view_shape))) * 255).astype(np.uint8))
             for i, ch in enumerate(result.channels)]
    return {"image": image, "overlays": overlays, "views": views}


def _context(result: RegionExplanation | None, info: PageInfo, figs: dict[str, Any] | None,
             filters: np.ndarray | None) -> dict[str, Any]:
    if result is None or figs is None:
        return {"result": None, "info": info}
    methods = list(dict.fromkeys(m for (_, m) in figs["overlays"]))
    return {
        "result": result, "info": info, "image": png_data_uri(figs["image"]),
        "top": result.top(5), "multi_label": result.head == "sigmoid",
        "methods": [(m, method(m).title, method(m).description) for m in methods],
        "targets": [{"view": t, "overlays": {m: png_data_uri(figs["overlays"][t.name, m])
                                             for m in methods if (t.name, m) in figs["overlays"]}}
                    for t in result.targets],
        "views": [(ch, mean, png_data_uri(v)) for ch, mean, v in figs["views"]],
        "filters": png_data_uri(filters) if filters is not None else None,
    }


def render_image_page(result: RegionExplanation | None, info: PageInfo, form: PageForm | None = None,
                      error: str | None = None, filters: np.ndarray | None = None) -> str:
    """The page as HTML: the upload `form` (server only), an `error`, and the `result` if any
    (every computed overlay; `filters` = the first-layer filter grid)."""
    figs = figures(result) if result is not None else None
    return environment().get_template("image_page.html").render(form=form, error=error,
                                                                **_context(result, info, figs, filters))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:40]


def write_image_report(image: Path, model_dir: Path, out: Path, config: RegionConfig | None = None,
                       mpp: float | None = None) -> Path:
    """Explain `image` with the model in `model_dir` and write `out/`: index.html (the page),
    image.png, <class>-<method>.png overlays, activation-<channel>.png, filters.png and
    result.json (top 5, probabilities, stamp). Skipped when `out` is current for the same image
    bytes, model weights and settings. Returns the page's path."""
    config = config or RegionConfig()
    out, image = Path(out), Path(image)
    pixels, recorded = read_image(image)
    sha = model_sha256(model_dir)
    settings = {"region": asdict(config), "mpp": mpp, "model_sha256": sha}
    stamp = {"config_hash": config_hash(settings), "source_sha256": file_sha256(image)}
    if is_current(out / RESULT, **stamp):
        log.info("%s: up to date", out)
        return out / PAGE
    model, model_config = load_model(model_dir)
    result = explain_region(pixels, mpp if mpp is not None else recorded, model, model_config, config)
    figs, filters = figures(result), filter_grid(model)
    info = PageInfo(source=image.name, model_name=model_config.name, model_sha256=sha,
                    notes=mpp_notes(result))
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        Image.fromarray(figs["image"]).save(tmp / "image.png")
        for (name, method), rgb in figs["overlays"].items():
            Image.fromarray(rgb).save(tmp / f"{result.classes.index(name):02d}-{_slug(name)}-{method}.png")
        for channel, _, rgb in figs["views"]:
            Image.fromarray(rgb).save(tmp / f"activation-{channel:03d}.png")
        Image.fromarray(filters).save(tmp / "filters.png")
        (tmp / PAGE).write_text(render_image_page(result, info, filters=filters), encoding="utf-8")
        (tmp / RESULT).write_text(json.dumps({"stamp": stamp, **result_summary(result)}, indent=2) + "\n")
    log.info("%s: %s explained (%d tiles, %d targets)", out / PAGE, image.name, len(result.tiles), len(result.targets))
    return out / PAGE


def result_summary(result: RegionExplanation) -> dict[str, Any]:
    """JSON-ready summary: classes, head, logits, probabilities, top 5, targets with rank."""
    return {"source_mpp": result.mpp, "mpp_assumed": result.mpp_assumed, "tiles": len(result.tiles),
            "classes": result.classes, "head": result.head, "logits": result.logits.tolist(),
            "probabilities": result.probabilities.tolist(),
            "top5": [{"class": c, "probability": p} for c, p in result.top(5)],
            "targets": [{"class": t.name, "rank": t.rank, "probability": t.probability, "in_top5": t.in_top5,
                         "methods": sorted(t.maps)} for t in result.targets]}


def mpp_notes(result: RegionExplanation) -> list[str]:
    """A warning when the image's resolution was assumed, not read or given."""
    return ([f"The image records no microscope resolution; assumed the model's {result.mpp:g} µm/px. "
             "Pass --mpp if that is wrong."] if result.mpp_assumed else [])
