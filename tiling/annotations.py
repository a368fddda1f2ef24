"""Lesion annotations: QuPath GeoJSON, ASAP/CAMELYON XML and Aperio ImageScope XML -> polygons
-> lesion masks.

Which annotations are lesions (a class is a GeoJSON classification name or an XML group,
compared case-insensitively as shell patterns, e.g. `tumor*`):
- the exclusion classes (`exclude_classes`, default `EXCLUSION`: CAMELYON's `_2`) are subtracted
  from every lesion they overlap, by adding them to that lesion's `holes`;
- `lesion_classes` given: exactly those classes are lesions, all others ignored;
- otherwise, ASAP XML follows CAMELYON16: groups `_0`, `_1`, `Tumor` are lesions, others ignored;
  GeoJSON and Aperio XML count every annotation (classified or not) except the classes in
  `NON_LESION`.
An Aperio ImageScope XML (root <Annotations>) gives one polygon per <Region>, its class the name of
its <Annotation> layer; a negative region (NegativeROA="1") is of class `exclusion`; a two-vertex
region (an ellipse's bounding box) becomes the inscribed ellipse.
GeoJSON features whose `objectType` is not "annotation" (cells, detections) are ignored.
Files are parsed as data only (json, xml.etree with expat's entity-expansion limits).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import AnnotationError

log = logging.getLogger(__name__)

CAMELYON_LESION = frozenset({"_0", "_1", "tumor"})
EXCLUSION = frozenset({"_2", "exclusion"})
NON_LESION = frozenset({"other", "ignore*", "region*", "stroma", "immune cells", "necrosis",
                        "normal", "background"})
ROLES = ("lesion", "exclusion", "ignored")
UNCLASSIFIED = "(unclassified)"  # how a class-less annotation is listed


def _matches(group: str, patterns: Collection[str]) -> bool:
    """True when `group` matches one of `patterns` (shell patterns), case-insensitively."""
    return any(fnmatch.fnmatchcase(group.lower(), p.lower()) for p in patterns)


@dataclass(frozen=True)
class LesionRules:
    """Which annotation classes are lesions (None: the format's default, module docstring), which
    are exclusions subtracted from them (None: `EXCLUSION`), and the most vertices one polygon may
    have, holes included (None: no limit; `StitchConfig.max_vertices` in a run)."""

    lesion: Collection[str] | None = None
    exclude: Collection[str] | None = None
    max_vertices: int | None = None

    def role(self, group: str, camelyon: bool) -> str:
        """"lesion", "exclusion" or "ignored" for an annotation of class `group` in a file whose
        default is CAMELYON16's rule (`camelyon`: ASAP XML) or else the GeoJSON one."""
        if _matches(group, EXCLUSION if self.exclude is None else self.exclude):
            return "exclusion"
        if self.lesion is not None:
            lesion = _matches(group, self.lesion)
        else:
            lesion = _matches(group, CAMELYON_LESION) if camelyon else not _matches(group, NON_LESION)
        return "lesion" if lesion else "ignored"


@dataclass
class Lesion:
    """One lesion polygon in level-0 pixel coordinates.

    exterior: (K, 2) float64 x, y; holes: rings subtracted from it (its own holes and any
    overlapping exclusion polygons); name: the annotation's name or id; group: its class.
    """

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    name: str = ""
    group: str = ""

    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) of the exterior."""
        (x0, y0), (x1, y1) = self.exterior.min(axis=0), self.exterior.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def _ring(points: Any, where: str) -> np.ndarray:
    """A polygon ring as (K, 2) float64; raises ValueError naming `where` when malformed."""
    try:  # one conversion for a well-formed ring; the checks below say what is wrong otherwise
        ring = np.array(points, dtype=np.float64)
    except (TypeError, ValueError):
        ring = np.empty((0, 0))
    if ring.ndim != 2 or ring.shape[1] < 2:
        if not isinstance(points, list) or not all(isinstance(p, (list, tuple)) and len(p) >= 2
                                                   for p in points):
            raise ValueError(f"{where}: a ring must be a list of [x, y] coordinate pairs")
        try:
            ring = np.array([[float(p[0]), float(p[1])] for p in points], dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: a coordinate is not a number") from exc
    ring = np.ascontiguousarray(ring[:, :2])
    if not np.isfinite(ring).all():
        raise ValueError(f"{where}: a coordinate is not finite")
    other = ring[(ring != ring[0]).any(axis=1)] if len(ring) else ring
    if not len(other) or not (other != other[0]).any(axis=1).any():
        raise ValueError(f"{where}: a polygon ring needs at least 3 distinct vertices, got {len(ring)} points")
    return ring


def _geojson_features(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise ValueError("expected a FeatureCollection, a Feature or a list of Features")


def _class_name(properties: dict[str, Any]) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        return str(classification.get("name") or "")
    return str(classification or properties.get("class") or "")


def _geojson_polygons(data: Any) -> Iterator[Lesion]:
    for i, feature in enumerate(_geojson_features(data)):
        where = f"feature {i}"
        if not isinstance(feature, dict):
            raise ValueError(f"{where}: not a GeoJSON Feature object")
        properties = feature.get("properties") or {}
        if properties.get("objectType", "annotation") != "annotation":
            continue
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        if not isinstance(geometry, dict) or "coordinates" not in geometry:
            raise ValueError(f"{where}: geometry has no coordinates")
        kind, coordinates = geometry.get("type"), geometry["coordinates"]
        if kind == "Polygon":
            parts = [coordinates]
        elif kind == "MultiPolygon":
            parts = coordinates
        else:
            log.debug("%s: skipping a %s geometry", where, kind)
            continue
        if not isinstance(parts, list):
            raise ValueError(f"{where}: {kind} coordinates must be a list")
        name = str(properties.get("name") or feature.get("id") or where)
        for j, rings in enumerate(parts):
            here = f"{where} polygon {j}"
            if not isinstance(rings, list) or not rings:
                raise ValueError(f"{here}: a polygon must be a non-empty list of rings")
            yield Lesion(_ring(rings[0], here), [_ring(r, f"{here} hole") for r in rings[1:]],
                         name, _class_name(properties))


def _xml_polygons(root: ET.Element) -> Iterator[Lesion]:
    for i, annotation in enumerate(root.iter("Annotation")):
        name = annotation.get("Name") or f"annotation {i}"
        where = f"annotation {name!r}"
        if annotation.get("Type", "Polygon") not in ("Polygon", "Spline", "Rectangle"):
            log.debug("%s: skipping a %s annotation", where, annotation.get("Type"))
            continue
        points = []
        for j, coordinate in enumerate(annotation.iter("Coordinate")):
            x, y = coordinate.get("X"), coordinate.get("Y")
            if x is None or y is None:
                raise ValueError(f"{where}: coordinate {j} lacks its {'X' if x is None else 'Y'} attribute")
            points.append((float(coordinate.get("Order", j)), x, y))
        points.sort(key=lambda p: p[0])
        yield Lesion(_ring([[x, y] for _, x, y in points], where), [], name,
                     annotation.get("PartOfGroup", ""))


ELLIPSE_VERTICES = 64


def _ellipse(corners: list[list[float]]) -> list[list[float]]:
    """The ellipse inscribed in the box of two opposite `corners`, as ELLIPSE_VERTICES points."""
    (x0, y0), (x1, y1) = corners
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return np.column_stack([(x0 + x1) / 2 + abs(x1 - x0) / 2 * np.cos(t),
                            (y0 + y1) / 2 + abs(y1 - y0) / 2 * np.sin(t)]).tolist()


def _aperio_polygons(root: ET.Element) -> Iterator[Lesion]:
    for i, annotation in enumerate(root.iter("Annotation")):
        layer = annotation.get("Name") or ""
        for region in annotation.iter("Region"):
            where = f"annotation {annotation.get('Id', i)} region {region.get('Id', '?')}"
            points = []
            for j, vertex in enumerate(region.iter("Vertex")):
                x, y = vertex.get("X"), vertex.get("Y")
                if x is None or y is None:
                    raise ValueError(f"{where}: vertex {j} lacks its {'X' if x is None else 'Y'} attribute")
                points.append([x, y])
            ring = _ellipse([[float(v) for v in p] for p in points]) if len(points) == 2 else points
            group = "exclusion" if region.get("NegativeROA") == "1" else layer
            yield Lesion(_ring(ring, where), [], region.get("Text") or where, group)


def _load(path: Path) -> tuple[Iterator[Lesion], bool]:
    """The polygons of an annotation file, and whether CAMELYON16's class rule applies (ASAP)."""
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return _geojson_polygons(json.loads(path.read_text(encoding="utf-8"))), False
    if suffix == ".xml":
        root = ET.parse(path).getroot()
        if root.tag == "Annotations":
            return _aperio_polygons(root), False
        return _xml_polygons(root), True
    raise ValueError("unknown annotation format; use .geojson/.json (QuPath) or .xml (ASAP, Aperio ImageScope)")


def check_annotation_files(paths: Collection[Path]) -> None:
    """AnnotationError naming the first of `paths` that is not a readable file."""
    for path in map(Path, paths):
        if path.is_dir():
            raise AnnotationError(f"{path}: is a folder, not an annotation file; name the file in "
                                  "the manifest's annotation column")
        if not path.is_file():
            raise AnnotationError(f"{path}: no such annotation file; check the manifest's annotation "
                                  "column or put the file there")


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def read_classified(path: Path, rules: LesionRules = LesionRules()) -> tuple[list[Lesion], dict[str, list[str]]]:
    """The lesions of an annotation file under `rules`, and its classes by role
    ({"lesion": [...], "exclusion": [...], "ignored": [...]}, sorted; UNCLASSIFIED for none).

    Raises AnnotationError naming the file and the problem when it is missing or malformed.
    """
    path = Path(path)
    try:
        found_polygons, camelyon = _load(path)
        polygons = list(found_polygons)
    except FileNotFoundError as exc:
        raise AnnotationError(f"{path}: no such annotation file; check the path") from exc
    except (ValueError, ET.ParseError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: malformed annotation file: {exc}; fix or re-export it") from exc
    if rules.max_vertices is not None:
        for polygon in polygons:
            vertices = len(polygon.exterior) + sum(len(h) for h in polygon.holes)
            if vertices > rules.max_vertices:
                raise AnnotationError(
                    f"{path}: polygon {polygon.name!r} has {vertices:,} vertices, over the limit of "
                    f"{rules.max_vertices:,}; simplify it (e.g. QuPath's Simplify shape) or raise the "
                    f"limit with --set stitch.max_vertices={vertices}")
    found: dict[str, list[Lesion]] = {role: [] for role in ROLES}
    classes: dict[str, set[str]] = {role: set() for role in ROLES}
    for polygon in polygons:
        role = rules.role(polygon.group, camelyon)
        found[role].append(polygon)
        classes[role].add(polygon.group or UNCLASSIFIED)
    for lesion in found["lesion"]:
        box = lesion.bounds()
        lesion.holes += [e.exterior for e in found["exclusion"] if _overlaps(box, e.bounds())]
    log.debug("%s: %d lesions, %d exclusions", path, len(found["lesion"]), len(found["exclusion"]))
    return found["lesion"], {role: sorted(names) for role, names in classes.items()}


def scanline_fill(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of `shape` that is True at (r, c) when the point (r, c) lies inside the
    polygon of vertices (`rows`, `cols`) (even-odd rule). A scanline fill: each edge crosses row r
    when min(y) <= r < max(y), at x = x0 + (r - y0)(x1 - x0)/(y1 - y0); a row's crossings, sorted,
    pair up into spans x_a <= c < x_b (a point exactly on the outline may fall either side, as with
    any fill rule). Cost: O(vertices + crossings + pixels), not vertices x pixels."""
    height, width = shape
    y0, x0 = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    first = np.clip(np.ceil(np.minimum(y0, y1)), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, height).astype(np.int64)
    counts = stop - first
    edge = np.repeat(np.arange(len(y0)), counts)
    row = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    x = x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    start, end = (np.clip(np.ceil(x[i::2]), 0, width).astype(np.int64) for i in (0, 1))
    edges = np.zeros((height, width + 1), np.int32)
    np.add.at(edges, (row[0::2], start), 1)
    np.add.at(edges, (row[0::2], end), -1)
    return np.cumsum(edges[:, :width], axis=1, dtype=np.int32) > 0


ON_EDGE = 1e-9  # map px: a centre on a bottom or right edge (a slide's far edge, where outlines are clipped) is in


def _fill(ring: np.ndarray, origin: tuple[int, int], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Mask of `shape` (offset by `origin` (row, col)) whose pixel centres lie inside `ring` (a centre
    exactly on a bottom or right edge counts as inside: the ring is moved ON_EDGE px down and right)."""
    return scanline_fill(ring[:, 1] / downsample - 0.5 - origin[0] + ON_EDGE,
                         ring[:, 0] / downsample - 0.5 - origin[1] + ON_EDGE, shape)


def rasterize_lesions(lesions: list[Lesion], shape_hw: tuple[int, int], downsample: float) -> np.ndarray:
    """Boolean (H, W) lesion mask: pixel (r, c) covers level-0 [c*d, (c+1)*d) x [r*d, (r+1)*d)
    for d = `downsample`, and is True when its centre ((c + 0.5) d, (r + 0.5) d) lies inside a
    lesion's exterior and outside its holes. Each lesion is filled within its bounding box only.
    """
    height, width = shape_hw
    mask = np.zeros((height, width), dtype=bool)
    for lesion in lesions:
        x0, y0, x1, y1 = lesion.bounds()
        c0, r0 = max(0, math.floor(x0 / downsample)), max(0, math.floor(y0 / downsample))
        c1, r1 = min(width, math.ceil(x1 / downsample) + 1), min(height, math.ceil(y1 / downsample) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        box = (r1 - r0, c1 - c0)
        inside = _fill(lesion.exterior, (r0, c0), box, downsample)
        for hole in lesion.holes:
            inside &= ~_fill(hole, (r0, c0), box, downsample)
        mask[r0:r1, c0:c1] |= inside
    return mask
