"""The archive as tables: every slide's audit.json and failure.json under ``out/slides``, and
audit.csv (one row per slide x method)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tiling.errors import StoreError
from tiling.store import AUDIT, FAILURE
from tiling.store.records import load_audit, load_failure

log = logging.getLogger(__name__)

ID_COLUMNS = ["slide_id", "label", "prediction", "method"]


@dataclass
class Archive:
    """audits: each slide's audit.json plus "folder" (its folder name); failures: each
    failure.json plus "folder"; unreadable: "folder: problem" for files that would not parse."""

    audits: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    unreadable: list[str]


def scan(out: Path) -> Archive:
    """Read every ``out/slides/*/audit.json`` and ``failure.json`` (sorted by folder name)."""
    archive = Archive([], [], [])
    for folder in sorted(p for p in (Path(out) / "slides").glob("*") if p.is_dir()):
        for name, load, bucket in ((FAILURE, load_failure, archive.failures),
                                   (AUDIT, load_audit, archive.audits)):
            path = folder / name
            if not path.is_file():
                continue
            try:
                record = load(path)
            except StoreError as exc:
                archive.unreadable.append(f"{folder.name}/{name}: {exc}")
                continue
            bucket.append({**record, "folder": folder.name})
            if name == FAILURE:
                break  # a failed slide's older audit.json is stale
    return archive


def metric_columns(audits: list[dict[str, Any]]) -> list[str]:
    """Every metric name found in the audits, first-seen order."""
    names: dict[str, None] = {}
    for audit in audits:
        for scores in audit.get("metrics", {}).values():
            names.update(dict.fromkeys(scores))
    return list(names)


def method_flags(audit: dict[str, Any], method: str) -> list[str]:
    """The slide's flags that concern `method`: slide-wide ones and those naming it."""
    found = []
    for flag in audit.get("flags", []):
        names = flag.get("methods", [])
        if flag["flag"] in ("prediction_wrong", "validation_failed") or method in names or any(
                method in pair.split("~") for pair in names):
            found.append(flag["flag"])
    return found


def audit_table(audits: list[dict[str, Any]]) -> pd.DataFrame:
    """audit.csv: one row per slide x method: slide_id, label, prediction, method, each metric
    (empty when n/a), flags (;-separated) and the report's relative path."""
    columns = metric_columns(audits)
    rows = []
    for audit in audits:
        for method, scores in audit.get("metrics", {}).items():
            rows.append({"slide_id": audit.get("slide_id"), "label": audit.get("label"),
                         "prediction": audit.get("prediction"), "method": method,
                         **{c: scores.get(c, {}).get("value") for c in columns},
                         "flags": ";".join(method_flags(audit, method)),
                         "report": f"slides/{audit['folder']}/report.html"})
    table = pd.DataFrame(rows, columns=[*ID_COLUMNS, *columns, "flags", "report"])
    for column in ("label", "prediction"):
        table[column] = table[column].astype("Int64")
    return table.astype({c: "float64" for c in columns})
