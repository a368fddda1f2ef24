"""An archive of slides: a manifest CSV or a folder of slides with annotations beside them.
The one reader of archives: `run`, `train`, `slides` (and so the Airflow DAG) all use it.

Manifest CSV (UTF-8, a byte-order mark allowed; only `path` is required; paths are relative to
the CSV's folder):
    slide_id        folder name under OUT/slides (default: the slide file's stem)
    path            the slide file
    label           a class name of the model or a class index below its number of classes;
                    a sigmoid (multi-label) model's slide may list several separated by ';'
                    (';' alone: none of the classes); empty = unknown
    annotation      an annotation file (QuPath GeoJSON or ASAP XML); empty = none
    annotation_*    further annotation files (e.g. annotation_xml); all listed files are used
    mpp             the slide's level-0 µm/px; overrides --slide-mpp and the file's tags
    annotation_downsample  annotation coordinates = slide level-0 coordinates x this factor
                    (e.g. 32 for a level-5 export annotated at level 0); empty = 1
    annotation_mpp  the µm/px of the annotation coordinates (instead of annotation_downsample)
The last three are positive numbers or empty (= not given). Every other column (e.g. ink,
scanner, site) is kept on the record as text, for `run --group-by`.

Folder: every file with a slide suffix (SLIDE_SUFFIXES) directly inside it; its annotations are the
files with the same stem and an annotation suffix (ANNOTATION_SUFFIXES) beside it; labels are
unknown. Slide ids must be usable folder names (`check_slide_id`) and unique. Nothing in the
archive is ever written.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tiling.config import PLAUSIBLE_MPP, plausible
from tiling.errors import ArchiveError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SlideRecord:
    """One slide: its id (folder under OUT/slides), file, labels (class indices; None = unknown),
    annotation files, and what the manifest declares (None = not given): mpp (level-0 µm/px),
    annotation_downsample (annotation px per slide level-0 px), annotation_mpp (µm per
    annotation px); columns: every manifest cell of its row as (column, text) pairs (none for a
    folder archive)."""

    slide_id: str
    path: Path
    labels: tuple[int, ...] | None = None
    annotations: tuple[Path, ...] = ()
    mpp: float | None = None
    annotation_downsample: float | None = None
    annotation_mpp: float | None = None
    columns: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> int | None:
        """The slide's one class index, None when unknown or when it lists several or none."""
        return self.labels[0] if self.labels is not None and len(self.labels) == 1 else None


def check_slide_id(slide_id: str, where: str) -> str:
    """`slide_id` when it is a usable folder name; ArchiveError naming `where` otherwise."""
    if not _SAFE_ID.match(slide_id):
        raise ArchiveError(f"{where}: slide id {slide_id!r} is not a usable folder name; use letters, "
                           "digits, '.', '_' and '-', starting with a letter or digit")
    return slide_id


NUMBERS = ("mpp", "annotation_downsample", "annotation_mpp")  # manifest columns of positive numbers


def positive(text: str) -> float | None:
    """The number written in `text` when it is finite and > 0, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def parse_positive(cell: dict[str, str], column: str, where: str) -> float | None:
    """The positive number in `column` of a manifest row (None when absent or empty)."""
    text = cell.get(column, "")
    if not text:
        return None
    value = positive(text)
    if value is None:
        raise ArchiveError(f"{where}: `{column}` {text!r} is not a positive number; fix the cell "
                           "or leave it empty")
    return value


def parse_label(text: str, classes: Sequence[str], multi_label: bool, where: str) -> tuple[int, ...] | None:
    """A label cell -> class indices (None = empty = unknown). Each part is a class name or an
    index below len(classes); several parts (';') only for a multi-label model."""
    text = text.strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(";")] if multi_label else [text]
    indices = []
    for part in filter(None, parts):
        if part in classes:
            indices.append(list(classes).index(part))
        elif part.isascii() and part.isdigit() and int(part) < len(classes):
            indices.append(int(part))
        else:
            several = "" if multi_label else "; a softmax model takes one class per slide"
            raise ArchiveError(f"{where}: label {part!r} is neither a class of the model ({', '.join(classes)}) "
                               f"nor a class index below {len(classes)}{several}; fix the `label` cell or "
                               "leave it empty (unknown)")
    return tuple(dict.fromkeys(indices))


def read_manifest(manifest: Path, classes: Sequence[str] | None = None,
                  multi_label: bool = False) -> list[SlideRecord]:
    """Slide records of a manifest CSV (module docstring). classes: the model's class names, to
    read the labels against; None leaves labels unread (listing slides only)."""
    manifest = Path(manifest)
    root = manifest.parent
    records = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            if "path" not in columns:
                raise ArchiveError(f"{manifest}: no `path` column (columns: {', '.join(columns) or 'none'}); "
                                   "give a CSV with a header row naming slide_id, path, label, annotation")
            notes = [c for c in columns if (c == "annotation" or c.startswith("annotation_")) and c not in NUMBERS]
            for row in reader:
                where = f"{manifest} line {reader.line_num}"
                cell = {k: (v or "").strip() for k, v in row.items() if k is not None}
                if not cell["path"]:
                    raise ArchiveError(f"{where}: empty `path`; name the slide file")
                path = root / cell["path"]
                labels = None if classes is None else parse_label(cell.get("label", ""), classes,
                                                                  multi_label, where)
                slide_id = check_slide_id(cell.get("slide_id") or path.stem, where)
                numbers = {c: parse_positive(cell, c, where) for c in NUMBERS}
                if numbers["mpp"] is not None and not plausible(numbers["mpp"]):
                    raise ArchiveError(f"{where}: `mpp` {numbers['mpp']:g} is outside a slide scanner's "
                                       f"{PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px; fix the cell (e.g. "
                                       "0.25 at 40x, 0.5 at 20x) or leave it empty")
                if numbers["annotation_downsample"] and numbers["annotation_mpp"]:
                    raise ArchiveError(f"{where}: both `annotation_downsample` and `annotation_mpp` "
                                       "given; keep one")
                records.append(SlideRecord(slide_id, path, labels,
                                           tuple(root / cell[c] for c in notes if cell[c]), **numbers,
                                           columns=tuple(cell.items())))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ArchiveError(f"{manifest}: cannot read the manifest ({exc}); give a UTF-8 CSV file") from exc
    return _checked(records, str(manifest))


def read_folder(folder: Path) -> list[SlideRecord]:
    """Slide records for the slide files directly in `folder`, annotations matched by stem."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    notes = [p for p in files if p.suffix.lower() in ANNOTATION_SUFFIXES]
    records = [SlideRecord(check_slide_id(p.stem, str(p)), p, None, tuple(n for n in notes if n.stem == p.stem))
               for p in files if p.suffix.lower() in SLIDE_SUFFIXES]
    return _checked(records, str(folder))


def _checked(records: list[SlideRecord], where: str) -> list[SlideRecord]:
    """`records` after checking that there is a slide and ids are unique."""
    if not records:
        raise ArchiveError(f"{where}: no slides found; give a manifest CSV or a folder holding "
                           f"slide files ({', '.join(SLIDE_SUFFIXES)})")
    seen: set[str] = set()
    for r in records:
        if r.slide_id in seen:
            raise ArchiveError(f"{where}: slide id {r.slide_id!r} appears twice; make the ids unique")
        seen.add(r.slide_id)
    return records


def group_values(records: Sequence[SlideRecord], by: Sequence[str]) -> dict[str, dict[str, str]]:
    """{slide_id: {column: text}} of the manifest columns `by`; ArchiveError naming the archive's
    columns when one of `by` is not among them."""
    known = list(dict.fromkeys(c for r in records for c, _ in r.columns))
    missing = [c for c in by if c not in known]
    if missing:
        have = f"its columns are {', '.join(known)}" if known else "a folder archive has no columns"
        raise ArchiveError(f"--group-by {', '.join(missing)}: no such manifest column; {have}; name one "
                           "of those or add the column to the manifest CSV")
    return {r.slide_id: {c: dict(r.columns).get(c, "") for c in by} for r in records}


def read_archive(archive: Path, classes: Sequence[str] | None = None,
                 multi_label: bool = False) -> list[SlideRecord]:
    """Slide records of a manifest CSV or a folder of slides (see `read_manifest`)."""
    archive = Path(archive)
    if archive.is_dir():
        return read_folder(archive)
    if archive.suffix.lower() == ".csv":
        return read_manifest(archive, classes, multi_label)
    raise ArchiveError(f"{archive}: not a manifest .csv nor a folder of slides; give one of those")
