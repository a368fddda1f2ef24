"""The archive as tables: every slide's audit.json and failure.json under ``out/slides``, and
audit.csv (one row per slide x method)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reports.audit.flags import flag
from reports.audit.registry import metric
from tiling.errors import StoreError
from tiling.store import AUDIT, FAILURE
from tiling.store.records import VALIDATE, load_audit, load_failure

log = logging.getLogger(__name__)

DELETION = "deletion_area"
ID_COLUMNS = ["slide_id", "label", "prediction", "verdict", "method"]


@dataclass
class Archive:
    """audits: each slide's audit.json plus "folder" (its folder name); failures: each
    failure.json plus "folder"; unreadable: "folder: problem" for files that would not parse."""

    audits: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    unreadable: list[str]


def scan(out: Path) -> Archive:
    """Read every ``out/slides/*/audit.json`` and ``failure.json`` (sorted by folder name).

    A slide that failed before its audit lists as a failure (an older audit.json is stale); one
    that failed only its validation keeps its fresh audit, whose flags say so."""
    archive = Archive([], [], [])
    slides = Path(out) / "slides"
    folders = sorted(e.name for e in os.scandir(slides) if e.is_dir()) if slides.is_dir() else []
    for folder in map(slides.joinpath, folders):
        present = set(os.listdir(folder))  # one directory read, not a stat per file
        for name, load, bucket in ((FAILURE, load_failure, archive.failures),
                                   (AUDIT, load_audit, archive.audits)):
            path = folder / name
            if name not in present:
                continue
            try:
                record = load(path)
            except StoreError as exc:
                archive.unreadable.append(f"{folder.name}/{name}: {exc}")
                continue
            if name == FAILURE and record.get("stage") == VALIDATE:
                continue
            bucket.append({**record, "folder": folder.name})
            if name == FAILURE:
                break
    return archive


def metric_columns(audits: list[dict[str, Any]]) -> list[str]:
    """Every metric name found in the audits, first-seen order; each must be registered
    (`reports.audit.registry.metric` raises RegistryError naming an unknown one)."""
    names: dict[str, None] = {}
    for audit in audits:
        for scores in audit.get("metrics", {}).values():
            names.update(dict.fromkeys(scores))
    return [metric(name).name for name in names]


def missing_metrics(audits: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """"folder: metrics" for each audit that lacks some of `columns` (audited with another
    config); shown on the index, never dropped silently."""
    problems = []
    for audit in audits:
        for method, scores in audit.get("metrics", {}).items():
            lacking = [c for c in columns if c not in scores]
            if lacking:
                problems.append(f"{audit['folder']}/{AUDIT}: {method} lacks {', '.join(lacking)} "
                                "(audited with other settings); rerun the audit of this slide")
                break
    return problems


def method_flags(audit: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The slide's raised flags (audit.json records) that concern `method`: slide-scope ones, and
    method-scope ones naming it (alone or in a pair "a~b")."""
    found = []
    for raised in audit.get("flags", []):
        names = raised.get("methods", [])
        if flag(raised["flag"]).scope == "slide" or method in names or any(
                method in pair.split("~") for pair in names):
            found.append(raised)
    return found


def audit_table(audits: list[dict[str, Any]]) -> pd.DataFrame:
    """audit.csv: one row per slide x method: slide_id, label, prediction, the slide's verdict,
    method, each metric (empty when n/a), the method's deletion area (`explainers.faithfulness`;
    empty when not computed), flags (;-separated) and the report's relative path."""
    columns = metric_columns(audits)
    rows = []
    for audit in audits:
        for method, scores in audit.get("metrics", {}).items():
            rows.append({"slide_id": audit.get("slide_id"), "label": audit.get("label"),
                         "prediction": audit.get("prediction"), "verdict": audit.get("verdict"),
                         "method": method,
                         **{c: scores.get(c, {}).get("value") for c in columns},
                         DELETION: ((audit.get("faithfulness") or {}).get("areas") or {}).get(method),
                         "flags": ";".join(f["flag"] for f in method_flags(audit, method)),
                         "report": f"slides/{audit['folder']}/report.html"})
    table = pd.DataFrame(rows, columns=[*ID_COLUMNS, *columns, DELETION, "flags", "report"])
    for column in ("label", "prediction"):
        table[column] = table[column].astype("Int64")
    return table.astype(dict.fromkeys([*columns, DELETION], "float64"))
