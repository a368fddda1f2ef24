"""An archive of slides to audit: a manifest CSV or a folder of slides with annotations beside them.

Manifest CSV columns (only `path` is required; paths are relative to the CSV's folder):
    slide_id        folder name under OUT/slides (default: the slide file's stem)
    path            the slide file
    label           1 = lesion, 0 = none, empty = unknown
    annotation      an annotation file (QuPath GeoJSON or ASAP XML); empty = none
    annotation_*    further annotation files (e.g. annotation_xml); all listed files are used

Folder: every file with a slide suffix (SLIDE_SUFFIXES) directly inside it; its annotations are the
files with the same stem and an annotation suffix (ANNOTATION_SUFFIXES) beside it; labels are
unknown. Nothing in the archive is ever written.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from tiling.errors import AuditError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ArchiveError(AuditError):
    """The archive itself (manifest or folder) cannot be read: the run cannot start."""


@dataclass(frozen=True)
class SlideRecord:
    """One slide to audit: its id (folder under OUT/slides), file, label and annotation files."""

    slide_id: str
    path: Path
    label: int | None = None
    annotations: tuple[Path, ...] = ()


def _label(text: str, where: str) -> int | None:
    """A manifest label cell: empty = unknown, else a whole number."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise ArchiveError(f"{where}: label {text!r} is not a whole number; use 1, 0 or leave it empty")
    return int(value)


def read_manifest(manifest: Path) -> list[SlideRecord]:
    """Slide records from a manifest CSV (see the module docstring for its columns)."""
    manifest = Path(manifest)
    root = manifest.parent
    try:
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ArchiveError(f"{manifest}: cannot read the manifest ({exc})") from exc
    if "path" not in columns:
        raise ArchiveError(f"{manifest}: no `path` column; columns are {', '.join(columns)}")
    note_columns = [c for c in columns if c == "annotation" or c.startswith("annotation_")]
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{manifest} line {line}"
        if not (row.get("path") or "").strip():
            raise ArchiveError(f"{where}: empty `path`; name the slide file")
        path = root / row["path"].strip()
        notes = tuple(root / row[c].strip() for c in note_columns if (row.get(c) or "").strip())
        slide_id = (row.get("slide_id") or "").strip() or path.stem
        records.append(SlideRecord(slide_id, path, _label(row.get("label") or "", where), notes))
    return _checked(records, str(manifest))


def read_folder(folder: Path) -> list[SlideRecord]:
    """Slide records for the slide files directly in `folder`, annotations matched by stem."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    notes = [p for p in files if p.suffix.lower() in ANNOTATION_SUFFIXES]
    records = [SlideRecord(p.stem, p, None, tuple(n for n in notes if n.stem == p.stem))
               for p in files if p.suffix.lower() in SLIDE_SUFFIXES]
    return _checked(records, str(folder))


def _checked(records: list[SlideRecord], where: str) -> list[SlideRecord]:
    """`records` after checking ids are unique, usable folder names and that there is a slide."""
    if not records:
        raise ArchiveError(f"{where}: no slides found; give a manifest CSV or a folder holding "
                           f"slide files ({', '.join(SLIDE_SUFFIXES)})")
    seen: set[str] = set()
    for r in records:
        if not _SAFE_ID.match(r.slide_id):
            raise ArchiveError(f"{where}: slide id {r.slide_id!r} is not a usable folder name; "
                               "use letters, digits, '.', '_' and '-'")
        if r.slide_id in seen:
            raise ArchiveError(f"{where}: slide id {r.slide_id!r} appears twice; ids must be unique")
        seen.add(r.slide_id)
    return records


def read_archive(archive: Path) -> list[SlideRecord]:
    """Slide records of a manifest CSV or a folder of slides."""
    archive = Path(archive)
    if archive.is_dir():
        return read_folder(archive)
    if archive.suffix.lower() == ".csv":
        return read_manifest(archive)
    raise ArchiveError(f"{archive}: not a manifest .csv nor a folder of slides")
