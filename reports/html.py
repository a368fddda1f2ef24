"""HTML reports: one page per slide (report.html) and the archive index (index.html, audit.csv).

Jinja2 templates (reports/templates) with autoescape on: every string from a slide, an
annotation or a config is escaped. Images are inlined as PNG data URIs, so each page is one
self-contained file that works opened from disk or a shared folder, or zipped and sent; the
index links to ``slides/<folder>/report.html`` relatively.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
from PIL import Image

from explainers.methods.registry import default_methods
from explainers.methods.registry import title as method_title
from reports import figures as F
from reports.audit.flags import SLIDE_VERDICTS, flag
from reports.audit.registry import BASE_METRICS, LESION_HIT_RATE, metric
from reports.audit.stage import is_negative
from reports.audit.subgroups import subgroup_table
from reports.audit.validation import validate_audit_table
from reports.crops import lesion_view, slide_crops
from reports.geojson import FOCUS_GEOJSON, TILES_GEOJSON, write_qupath_geojson
from reports.next_step import next_step, step_of
from reports.table import audit_table, method_flags, metric_columns, missing_metrics, scan
from tiling.errors import StoreError
from tiling.store import (
    AUDIT,
    AUDIT_CSV,
    EXPLAIN,
    INDEX,
    REPORT,
    ROW_THUMBNAIL,
    SUBGROUPS_CSV,
    atomic_path,
    chained_stamp,
    file_sha256,
    open_patch_store,
)
from tiling.store.explain import open_explain_store
from tiling.store.maps import THUMBNAIL, Maps, open_maps
from tiling.store.records import load_audit
from tiling.threads import stage_threads

log = logging.getLogger(__name__)

DISPLAY_SIDE = 1024  # px of the slide and map views (enlarged when the maps are smaller)
ROW_THUMB, ROW_QUALITY = 96, 75  # px and JPEG quality of a slide's thumbnail in the index
KEY_METRICS = tuple(m.name for m in BASE_METRICS if m.key)
PLOTTED = tuple(m.name for m in (*BASE_METRICS, LESION_HIT_RATE) if m.plotted)
GOOD_RGB, POOR_RGB = (158, 202, 225), (253, 190, 133)  # light blue, light orange: the metric shading's ends
GRADES = ("\u25b2", "\u25bc")  # the symbols of the good and the poor third of a metric's scale
PAGE_ROWS = 200  # the index shows this many slides a page (filtering and sorting run over all)
FIRST_IDS = 5  # slide ids shown for each reason of failure; the rest behind "all n"
TONES = {"fail": "bad", "review": "warn", "unchecked": "na", "info": "na", "pass": "ok"}  # verdict -> badge class


def number(value: Any, digits: int = 2) -> str:
    """A metric for display: fixed digits, "n/a" for None or non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def percent(p: float | None, logit: float | None = None) -> str:
    """A probability for display, never "100 %" or "0 %" for a p that only rounds there:
    "> 99.99 %" when p > 0.9999, "< 0.01 %" when p < 0.0001, else 100·p with 2 decimals; the
    logit z beside it when given ("> 99.99 % (logit 11.2)"), since it still tells such p apart."""
    if p is None or not math.isfinite(p):
        return "n/a"
    text = "> 99.99 %" if p > 0.9999 else "< 0.01 %" if p < 0.0001 else f"{100 * p:.2f} %"
    return text if logit is None or not math.isfinite(logit) else f"{text} (logit {logit:.3g})"


def place(peak: dict[str, Any]) -> str:
    """Where a peak of audit.json lies, in words: "on pen ink, 40 µm from Tumor 1", "in Tumor 1"."""
    parts = [f"on {peak['artefact']}"] if peak.get("artefact") else []
    if peak.get("lesion"):
        near = peak["lesion_um"]
        parts.append(f"in {peak['lesion']}" if near == 0 else f"{near:.0f} µm from {peak['lesion']}")
    return ", ".join(parts) or "no lesion annotated"


def goodness(value: float | None, name: str | None = None) -> float | None:
    """A value clipped to [0, 1], turned so that 1 is the end metric `name`'s registry record
    calls good (`Metric.better`; high without a name); None for n/a."""
    if value is None or not math.isfinite(value):
        return None
    clipped = min(max(value, 0.0), 1.0)
    return 1.0 - clipped if name is not None and metric(name).better == "low" else clipped


def shade(value: float | None, name: str | None = None) -> str:
    """A CSS background for a value: white at goodness g = 0.5, mixed towards GOOD_RGB (blue) by
    2g - 1 above it and towards POOR_RGB (orange) by 1 - 2g below it; none for n/a. Blue and
    orange stay apart under every colour blindness; `grade` adds a symbol besides."""
    g = goodness(value, name)
    if g is None:
        return "transparent"
    end, t = (GOOD_RGB, 2 * g - 1) if g >= 0.5 else (POOR_RGB, 1 - 2 * g)
    r, green, b = (round(255 + t * (c - 255)) for c in end)
    return f"rgb({r} {green} {b})"


def grade(value: float | None, name: str | None = None) -> str:
    """The symbol beside a shaded value, so colour is never the only cue: GRADES' "▲" when its
    goodness is above 2/3, "▼" below 1/3, "" in between and for n/a."""
    g = goodness(value, name)
    return "" if g is None else GRADES[0] if g > 2 / 3 else GRADES[1] if g < 1 / 3 else ""


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(number=number, percent=percent, shade=shade, grade=grade, place=place, method=method_title,
                       metric=lambda m: metric(m).title,
                       short=lambda m: metric(m).short, flag=lambda f: flag(f).title,
                       tone=lambda v: TONES[str(v).lower()], url=lambda s: quote(str(s)),
                       pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str))
    env.globals.update(gradient=F.css_gradient(), zip=zip)
    return env


def _write(path: Path, template: str, context: dict[str, Any]) -> Path:
    html = environment().get_template(template).render(**context)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path


def _class_name(index: int | None, classes: list[str]) -> str | None:
    if index is None:
        return None
    return classes[index] if 0 <= index < len(classes) else str(index)


def _overlays(audit: dict[str, Any], maps: Maps) -> tuple[dict[str, Any], list[dict[str, Any]], dict]:
    """The slide at DISPLAY_SIDE px (a JPEG, with its lesion outline layer), one lossless layer
    per scored map (None when nothing on tissue is > 0: "no positive evidence") with its peaks,
    the map's raw values at the legend ticks, and the colour scale of each map with positive evidence."""
    tissue = maps.tissue
    shape = tissue.shape
    shown = F.display_shape(shape, DISPLAY_SIDE, enlarge=True)
    levels = maps.pyramid(THUMBNAIL)  # the coarsest level still as large as the display is resized
    level = next((lv for lv in reversed(levels) if min(lv.array.shape[1:]) >= min(shown)), levels[0])
    rgb = Image.fromarray(np.ascontiguousarray(np.moveaxis(level.array[...], 0, -1)))
    thumb = np.asarray(rgb.resize(shown[::-1], Image.Resampling.BILINEAR))  # antialiased when shrinking
    lesion = F.nearest(maps.lesion > 0, shown)
    ratio = np.array(shown) / np.array(shape)
    outline = F.marks_layer(lesion)  # drawn once; each map's layer adds its peaks
    panels, scales = [], {}
    # a map larger than the view is coloured by its percentiles among the pixels shown (nearest)
    small = tissue.size > shown[0] * shown[1]
    shown_tissue = F.nearest(tissue, shown) if small else tissue
    for name in audit["methods"]:
        values = maps[name]
        on_tissue = values[tissue & np.isfinite(values)]
        reference = F.nearest(values, shown) if small else values
        scales[name] = F.percentile_scale(reference[shown_tissue & np.isfinite(reference)])
        peaks = [((p["row"] + 0.5) * ratio[0], (p["col"] + 0.5) * ratio[1])
                 for p in audit["peaks"].get(name, [])]
        heat = F.heat_layer(F.scaled_nearest(reference, scales[name], shown)) if (on_tissue > 0).any() else None
        if heat is None:
            del scales[name]  # no positive evidence: nothing to colour in the close-ups and patches
        panels.append({"name": name, "heat": heat and F.png_data_uri(heat),
                       "marks": F.marks_data_uri(F.draw_rings(outline.copy(), np.array(peaks))),
                       "ticks": np.quantile(on_tissue, F.TICKS).tolist() if on_tissue.size else []})
    photo = {"uri": F.jpeg_data_uri(thumb, quality=85),
             "marks": F.marks_data_uri(outline), "width": shown[1], "height": shown[0]}
    return photo, panels, scales


def _top_patches(audit: dict[str, Any], slide_dir: Path, maps: Maps, scales: dict) -> tuple[str | None, list]:
    """The most attended patches at full resolution with the lesion outline, each beside its
    CAM (the first of the default methods that ran, else the first CAM), and where each lies on
    the slide (% of its width and height)."""
    cams = [m for m in audit["methods"] if m != "attention"]
    method = next((m for m in default_methods("slides") if m in cams), cams[0] if cams else None)
    store = open_patch_store(slide_dir)
    explain = open_explain_store(slide_dir / EXPLAIN, store)
    footprint = float(store.attrs["footprint"])
    width, height = (float(v) for v in maps.attrs["dimensions"])
    tiles = []
    for rank, patch in enumerate(audit["top_patches"], start=1):
        image = np.asarray(store.patches[patch["index"]])
        box = (patch["x"], patch["y"], patch["x"] + footprint, patch["y"] + footprint)
        lesion = lesion_view(maps, box, image.shape[:2])
        cam = None if method not in scales else F.patch_overlay(image, explain[method][patch["index"]],
                                                                scales[method])
        tiles.append({**patch, "rank": rank, "uri": F.jpeg_data_uri(F.draw_marks(image.copy(), lesion)),
                      "cam_uri": None if cam is None else F.jpeg_data_uri(F.draw_marks(cam, lesion)),
                      "size": int(image.shape[0]),
                      "where": {"left": 100 * box[0] / width, "top": 100 * box[1] / height,
                                "width": 100 * footprint / width, "height": 100 * footprint / height}})
    return method, tiles


def _agreement(audit: dict[str, Any]) -> dict[str, Any]:
    methods = audit["methods"]
    matrix = {(a, a): {"spearman": 1.0, "top_iou": 1.0} for a in methods}
    for pair in audit["agreement"]:
        matrix[(pair["a"], pair["b"])] = matrix[(pair["b"], pair["a"])] = pair
    return {"methods": methods, "cells": [[matrix.get((a, b)) for b in methods] for a in methods]}


def _impressions(impressions: dict[str, Path] | None) -> list[dict[str, str]]:
    """{class: PNG path} -> [{"name", "src" (data URI)}] for the "what the model learnt" section."""
    return [{"name": name, "src": F.png_data_uri(np.asarray(Image.open(path).convert("RGB")))}
            for name, path in (impressions or {}).items()]


def slide_context(slide_dir: Path, impressions: dict[str, Path] | None = None,
                  maps: Maps | None = None, audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything report.html shows, from the slide's audit.json and stores (`maps`, `audit`: its
    maps.zarr and audit.json when already read), and the model's class impressions ({class: PNG
    path}, from `explainers.impressions.render_impressions`)."""
    slide_dir = Path(slide_dir)
    audit, maps = audit or load_audit(slide_dir), maps or open_maps(slide_dir)
    photo, panels, scales = _overlays(audit, maps)
    cam_method, tiles = _top_patches(audit, slide_dir, maps, scales)
    crops, crops_note = slide_crops(slide_dir, audit, maps, scales)
    classes = audit.get("classes", [])
    metrics = metric_columns([audit])
    more = [m for m in metrics if metric(m).detail]
    rows = [{"method": method, "flags": method_flags(audit, method),
             "cells": [audit["metrics"][method].get(m, {"value": None, "preprocessing": ""})
                       for m in metrics]} for method in audit["methods"]]
    settings = audit["provenance"].get("audit_config", {})
    glossary = [{"title": r.title, "formula": r.formula, "meaning": r.meaning,
                 "good": r.good.format(**settings, review_at=r.review_at)} for r in map(metric, metrics)]
    return {"audit": audit, "negative": is_negative(audit), "photo": photo, "ticks": F.TICKS,
            "panels": panels, "metrics": metrics, "more": more, "glossary": glossary, "rows": rows, "tiles": tiles,
            "summary": [metric(m) for m in metrics if metric(m).summary],
            "crops": crops, "crops_note": crops_note,
            "cam_method": cam_method, "agreement": _agreement(audit),
            "label_name": _class_name(audit.get("label"), classes),
            "target_name": _class_name(audit.get("target_class"), classes),
            "correct": audit.get("label") is None or audit["label"] == audit["prediction"],
            "model": audit["provenance"].get("model") or {}, "impressions": _impressions(impressions),
            "deletion": _deletion(audit.get("faithfulness")), "sanity": _sanity(audit.get("sanity")),
            "geojson": FOCUS_GEOJSON, "tiles_geojson": TILES_GEOJSON, "next_step": next_step(audit)}


def _deletion(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The deletion-faithfulness figure and areas of audit.json's "faithfulness" (None without it)."""
    if not record:
        return None
    labels = {name: method_title(name) for name in record["curves"]}
    return {**record, "uri": F.deletion_plot(record["fractions"], record["curves"], record["random_curve"], labels)}


def _sanity(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The randomisation-check figure and table of audit.json's "sanity" (None without it)."""
    if not record:
        return None
    labels = {name: method_title(name) for name in record["rho"]}
    return {**record, "uri": F.sanity_plot(record["layers"], record["rho"], record["rho_range"], labels)}


STAMP_META = re.compile(r'<meta name="slideaudit-stamp" content="([0-9a-f]+):([0-9a-f]*)">')


def report_stamp(slide_dir: Path, impressions: dict[str, Path] | None) -> dict[str, str]:
    """The stamp of a slide's report: audit.json's, this slideaudit's version and the sha256 of
    each class impression shown."""
    shown = {name: file_sha256(png) for name, png in sorted((impressions or {}).items())}
    return chained_stamp({"slideaudit": version("slideaudit"), "impressions": shown}, Path(slide_dir) / AUDIT)


def read_report_stamp(path: Path) -> dict[str, str] | None:
    """The stamp in a report's <head> (`STAMP_META`), None when absent or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            match = STAMP_META.search(f.read(4096))
    except OSError:
        return None
    return {"config_hash": match[1], "source_sha256": match[2]} if match else None


def render_slide_report(slide_dir: Path, impressions: dict[str, Path] | None = None, force: bool = False) -> Path:
    """Write ``slide_dir/report.html`` (atomic) from audit.json and the slide's stores, with the
    model's class impressions ({class: PNG path}) when given; skipped when its stamp
    (`report_stamp`, kept in its <head>) is current, unless `force`."""
    slide_dir = Path(slide_dir)
    stamp = report_stamp(slide_dir, impressions)
    if not force and read_report_stamp(slide_dir / REPORT) == stamp:
        log.info("%s: up to date", slide_dir / REPORT)
        if not (slide_dir / ROW_THUMBNAIL).is_file():
            write_row_thumbnail(slide_dir, open_maps(slide_dir))
        return slide_dir / REPORT
    maps, audit = open_maps(slide_dir), load_audit(slide_dir)  # read once for the page, GeoJSON and thumbnail
    with ThreadPoolExecutor(stage_threads()) as pool:  # the GeoJSON and the template beside the page
        beside: list[Future[Any]] = [pool.submit(write_qupath_geojson, slide_dir, audit, maps),
                                     pool.submit(environment().get_template, "slide.html")]  # once a process
        context = {**slide_context(slide_dir, impressions, maps, audit),
                   "stamp": f"{stamp['config_hash']}:{stamp['source_sha256']}"}
        for task in beside:
            task.result()
    write_row_thumbnail(slide_dir, maps)
    path = _write(slide_dir / REPORT, "slide.html", context)
    log.info("wrote %s", path)
    return path


def _raised(name: str) -> dict[str, str]:
    """A flag the index raises itself, as audit.json records a raised one."""
    return {"flag": name, "verdict": flag(name).verdict}


def _row_thumbnail_rgb(maps: Maps) -> np.ndarray:
    """The slide at ROW_THUMB px (uint8 RGB) from the coarsest level of its maps."""
    rgb = Image.fromarray(np.ascontiguousarray(np.moveaxis(maps.level(THUMBNAIL, maps.levels(THUMBNAIL) - 1), 0, -1)))
    return np.asarray(rgb.resize(F.display_shape(rgb.size[::-1], ROW_THUMB)[::-1], Image.Resampling.BILINEAR))


def write_row_thumbnail(slide_dir: Path, maps: Maps) -> Path:
    """Write ``slide_dir/thumbnail.jpg`` (atomic): the slide's index thumbnail, made with its report
    so that the index of thousands of slides reads a file each instead of their maps."""
    with atomic_path(Path(slide_dir) / ROW_THUMBNAIL) as tmp:
        tmp.write_bytes(F.jpeg_bytes(_row_thumbnail_rgb(maps), ROW_QUALITY))
    return Path(slide_dir) / ROW_THUMBNAIL


def _row_thumbnail(slide_dir: Path) -> str | None:
    """The slide's index thumbnail as a JPEG data URI: its report's ``thumbnail.jpg``, else made
    from its maps (None without either)."""
    try:
        return F.file_data_uri(Path(slide_dir) / ROW_THUMBNAIL, "image/jpeg")
    except FileNotFoundError:
        try:
            maps = open_maps(slide_dir)
        except StoreError:
            return None
        return F.jpeg_data_uri(_row_thumbnail_rgb(maps), quality=ROW_QUALITY)


def _metric_cell(col: str, value: float | None, name: str) -> tuple[str, str, str, str, str]:
    """A key-metric cell of the index: (column, sort key, text, background, grade symbol), made
    here rather than by filters in the template, which runs it for every slide x method x metric."""
    return col, "" if value is None else str(value), number(value), shade(value, name), grade(value, name)


def _index_rows(out: Path, audits: list[dict], marked: set[str], methods: list[str]) -> list[dict]:
    rows = []
    for audit in audits:
        flags = list(audit.get("flags", []))
        if audit.get("slide_id") in marked:
            flags.append(_raised("table_check_failed"))
        rows.append({"kind": "audit", "slide_id": audit.get("slide_id"), "folder": audit["folder"],
                     "label": _class_name(audit.get("label"), audit.get("classes", [])),
                     "prediction": audit.get("prediction_name"),
                     "probability": (audit.get("probabilities") or {}).get(audit.get("prediction_name")),
                     "logit": (audit.get("logits") or {}).get(audit.get("prediction_name")),
                     "correct": audit.get("label") is None
                     or audit.get("label") == audit.get("prediction"),
                     "verdict": audit.get("verdict"), "verdict_reason": audit.get("verdict_reason"),
                     "next_step": next_step(audit),
                     "cells": [_metric_cell(f"{m}.{k}", audit.get("metrics", {}).get(m, {}).get(k, {}).get("value"), k)
                               for m in methods for k in KEY_METRICS],
                     "flags": flags, "thumbnail": _row_thumbnail(out / "slides" / audit["folder"]),
                     "model": (audit.get("provenance", {}).get("model") or {}).get("name"),
                     "run_at": audit.get("provenance", {}).get("run_at")})
    return rows


def failure_reason(failure: dict[str, Any]) -> str:
    """A failure's message with what names its own slide (source path, file name, slide id of 3
    characters or more) replaced by "<slide>", so that slides failing alike share one reason."""
    message = str(failure.get("message", ""))
    path = str(failure.get("source_path") or "")
    names = {path, Path(path).name, str(failure.get("slide_id", ""))}
    for name in sorted((n for n in names if len(n) >= 3), key=len, reverse=True):
        message = message.replace(name, "<slide>")
    return message


def failure_groups(failures: list[dict[str, Any]], classes: list[str]) -> list[dict[str, Any]]:
    """The failed slides grouped by stage and `failure_reason`, most slides first: [{"stage",
    "reason", "slides" ([{"slide_id", "label" (class name)}], first seen first), "step"}]."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for failure in failures:
        stage = str(failure.get("stage"))
        group = groups.setdefault((stage, failure_reason(failure)), {
            "stage": stage, "reason": failure_reason(failure), "slides": [],
            "step": step_of(_raised("failed"), {"folder": "<id>"})})
        group["slides"].append({"slide_id": failure.get("slide_id", failure["folder"]),
                                "label": _class_name(failure.get("label"), classes)})
    return sorted(groups.values(), key=lambda g: -len(g["slides"]))


def verdict_counts(audits: list[dict[str, Any]]) -> dict[str, int]:
    """{"FAIL": n, "REVIEW": n, "PASS": n} over the audited slides."""
    return {v: sum(a.get("verdict") == v for a in audits) for v in SLIDE_VERDICTS}


def render_index(out: Path, group_by: tuple[str, ...] = (),
                 groups: dict[str, dict[str, str]] | None = None) -> tuple[Path, Path]:
    """Write ``out/index.html`` and ``out/audit.csv`` (atomic) from every slide's audit.json and
    failure.json; the table is checked by the ``audit.csv`` suite and failing slides marked. With
    `group_by` columns and each slide's `groups` values ({slide_id: {column: value}}), also the
    subgroup rates (`reports.audit.subgroups`) in the index and ``out/subgroups.csv``."""
    out = Path(out)
    archive = scan(out)
    subgroups = None
    if group_by:
        subgroups = subgroup_table(archive.audits, groups or {}, list(group_by))
        with atomic_path(out / SUBGROUPS_CSV) as tmp:
            subgroups.to_csv(tmp, index=False)
    table = audit_table(archive.audits)
    metrics = metric_columns(archive.audits)
    suite = validate_audit_table(table, {m: metric(m).range for m in metrics}).to_dict() if len(table) else None
    marked = {str(table.loc[i, "slide_id"]) for f in (suite or {}).get("failed", [])
              for i in f.get("rows", []) if i in table.index}
    with atomic_path(out / AUDIT_CSV) as tmp:
        table.to_csv(tmp, index=False)
    methods = list(dict.fromkeys(m for a in archive.audits for m in a.get("methods", [])))
    labels = [method_title(m) for m in methods]
    plots = [{"metric": m, "uri": F.distribution_plot(table, m, methods, labels, metric(m).title)}
             for m in PLOTTED if m in table and table[m].notna().any()]
    classes: list[str] = next((a["classes"] for a in archive.audits if a.get("classes")), [])
    context = {"rows": _index_rows(out, archive.audits, marked, methods), "methods": methods,
               "failures": failure_groups(archive.failures, classes), "first_ids": FIRST_IDS, "page_rows": PAGE_ROWS,
               "key_metrics": KEY_METRICS, "plots": plots, "suite": suite,
               "unreadable": archive.unreadable + missing_metrics(archive.audits, metrics),
               "n_audits": len(archive.audits), "verdicts": verdict_counts(archive.audits),
               "verdict_rank": {v: i for i, v in enumerate(SLIDE_VERDICTS)},
               "n_failures": len(archive.failures), "csv": AUDIT_CSV, "subgroups_csv": SUBGROUPS_CSV,
               "subgroups": None if subgroups is None else subgroups.to_dict("records")}
    index = _write(out / INDEX, "index.html", context)
    log.info("wrote %s and %s: %d slides, %d failed", index, out / AUDIT_CSV,
             len(archive.audits), len(archive.failures))
    return index, out / AUDIT_CSV
