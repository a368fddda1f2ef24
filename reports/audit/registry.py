"""The registry of metrics: one record each, everything else derived from them (the flags'
registry is `reports.audit.flags`).

`audit.py` scores through it, `html.py` and the index take titles, glossary and the key and
plotted columns from it, `table.py` takes audit.csv's columns and `validation.py` the ranges of
its suite. An unknown or missing key is an error, never a silent drop.

A metric is scored on a `MapView` (one stitched map against the lesion labels); its note says
how the map was prepared, with `{…}` filled from the audit config (e.g. `{tolerance_um:g}`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from reports.audit import metrics as M
from reports.errors import RegistryError
from tiling.artefacts import PATCH_SHARE

if TYPE_CHECKING:
    from reports.audit.config import AuditConfig

@dataclass
class MapView:
    """One map (H, W) as the metrics see it: lesion labels (0 = none, k = k-th lesion), the valid
    pixels (tissue where the map is finite), its peaks (row, col), map pixel side in µm, the
    artefact labels (H, W) (0 = none, `tiling.artefacts.ARTEFACT_KINDS`) and the artefact kind
    under each of the method's top patches. Top regions are computed once per fraction."""

    values: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    peaks: np.ndarray
    pixel_um: float
    config: AuditConfig
    artefacts: np.ndarray
    top_kinds: np.ndarray
    tops: dict[float, np.ndarray | None] = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def peak_kinds(self) -> np.ndarray:
        """The artefact kind under each peak, highest first."""
        return self.artefacts[self.peaks[:, 0], self.peaks[:, 1]] if len(self.peaks) else np.zeros(0, np.uint8)

    @functools.cached_property
    def lesion(self) -> np.ndarray:
        return self.labels > 0

    @functools.cached_property
    def flat(self) -> OnValid:
        """The map on its valid pixels only, for the metrics that need no pixel's place: read
        once per map rather than from the whole (H, W) by each metric (the same values)."""
        values = M.valid_values(self.values, self.valid)
        return OnValid(values, self.lesion[self.valid], np.ones(values.size, bool))

    @functools.cached_property
    def lesion_share(self) -> float:
        """Share of the valid pixels inside a lesion (0 without valid pixels)."""
        return float(self.flat.lesion.mean()) if self.flat.lesion.size else 0.0

    def overlap(self, fraction: float, measure: Callable[[np.ndarray, np.ndarray], float | None]) -> float | None:
        """`measure` (IoU or Dice) of the top-`fraction` region and the lesion; n/a without a lesion."""
        if not self.lesion_share:
            return None
        if fraction not in self.tops:
            self.tops[fraction] = M.top_k_mask(self.flat.values, self.flat.everywhere, fraction)
        top = self.tops[fraction]
        return None if top is None else measure(top, self.flat.lesion)


class OnValid(NamedTuple):
    """A map's values (float64, finite), lesion mask and an all-True mask on its valid pixels (1-D)."""

    values: np.ndarray
    lesion: np.ndarray
    everywhere: np.ndarray


SHOWN_AS = ("yes/no", "percent", "number")


@dataclass(frozen=True)
class Metric:
    """name: key in audit.json and audit.csv; title: for reports; short: index column header;
    formula: one line; note: the map's preprocessing (a format string over the audit config);
    range: the values it can take; key: shown per method in the index; plotted: a distribution
    plot in the index; score: the value on a MapView (None = n/a); meaning and good: the report's
    glossary (what it tells, which values are good and the flag threshold: format strings over
    the audit config, `{review_at:g}` from the record); detail: shown behind "more metrics";
    review_at: the value from which, on a slide predicted positive, the metric asks for review;
    summary: its column header in the slide page's summary table ("": not there); shown_as: how
    that cell shows the value (SHOWN_AS: a yes/no badge, a percentage or a number); better: which
    end of `range` is good ("high" or "low": the reports colour the value by it)."""

    name: str
    title: str
    short: str
    formula: str
    note: str
    score: Callable[[MapView], float | None]
    range: tuple[float, float] = (0.0, 1.0)
    key: bool = False
    plotted: bool = False
    meaning: str = ""
    good: str = ""
    detail: bool = False
    review_at: float | None = None
    summary: str = ""
    shown_as: str = "number"
    better: str = "high"

    def __post_init__(self) -> None:
        if self.shown_as not in SHOWN_AS or self.better not in ("high", "low"):
            raise RegistryError(f"metric {self.name!r}: shown_as {self.shown_as!r} must be one of {SHOWN_AS}, "
                                f"better {self.better!r} high or low")

    def preprocessing(self, view: MapView) -> str:
        where = f"tissue pixels at {view.pixel_um:.3g} µm/px, raw stitched values"
        return f"{where}; {self.note.format(**dataclasses.asdict(view.config))}"


TOP_NOTE = "strict top {fraction} of tissue pixels: ties at the cut left out when they overflow it, n/a if none left"
BASE_METRICS = (
    Metric("auroc", "AUROC", "AUROC", "P(a lesion pixel outscores a non-lesion pixel) = U / (P·N)",
           "rank-based, ties count ½", lambda v: M.pixel_auroc(*v.flat),
           key=True, plotted=True, summary="AUROC",
           meaning="how well the map's values separate lesion from other tissue",
           good="1 perfect, 0.5 chance, < 0.5 points away; flagged below {min_auroc:g} on a positive slide"),
    Metric("pointing_game", "Pointing game", "PG", "1 when the map's maximum lies on a lesion, else 0",
           "hit within {tolerance_um:g} µm of lesion on tissue, any pixel tied at the maximum counts "
           "unless it lies on an artefact",
           lambda v: M.pointing_game(v.values, v.lesion, v.valid, v.config.tolerance_um / v.pixel_um,
                                     off_limits=v.artefacts > 0),
           key=True, plotted=True, summary="On a lesion", shown_as="yes/no",
           meaning="whether the map's strongest point falls on a lesion",
           good="1 hit; a miss (0) flags the method on a positive slide"),
    Metric("relevance_mass", "Relevance mass", "Mass", "Σ_lesion max(m, 0) / Σ_tissue max(m, 0)",
           "negative values clipped to 0, no normalisation",
           lambda v: M.relevance_mass(*v.flat), key=True, plotted=True,
           summary="Mass in lesions", shown_as="percent",
           meaning="share of the map's positive mass inside the lesions",
           good="near 1; the lesion's share of tissue is what chance gives"),
    Metric("rank_accuracy", "Rank accuracy", "Rank", "|top-K pixels ∩ lesion| / K, K = |lesion|",
           "top-|lesion| pixels, ties at the cut shared pro rata",
           lambda v: M.relevance_rank_accuracy(*v.flat), plotted=True,
           meaning="share of the map's top pixels (as many as the lesion has) inside the lesion",
           good="near 1; the lesion's share of tissue is what chance gives"),
    Metric("iou_lesion_share", "IoU @ lesion share", "IoU", "|top ∩ lesion| / |top ∪ lesion|, top = lesion's share",
           TOP_NOTE.format(fraction="lesion share"), lambda v: v.overlap(v.lesion_share, M.iou), plotted=True,
           meaning="overlap of the map's top region, as large as the lesion, with the lesion",
           good="1 same region, 0 disjoint", detail=True),
    Metric("dice_lesion_share", "Dice @ lesion share", "Dice", "2|top ∩ lesion| / (|top| + |lesion|)",
           TOP_NOTE.format(fraction="lesion share"), lambda v: v.overlap(v.lesion_share, M.dice),
           meaning="overlap of the map's top region, as large as the lesion, with the lesion",
           good="1 same region, 0 disjoint", detail=True),
)
LESION_HIT_RATE = Metric(
    "lesion_hit_rate", "Lesion hit rate", "Hits", "lesions holding a peak / lesions on tissue",
    "top {n_peaks} local maxima at least {peak_distance_um:g} µm apart; a peak on an artefact never counts",
    lambda v: M.lesion_hit_rate(v.peaks[v.peak_kinds == 0], v.labels, v.valid), plotted=True,
    meaning="share of the lesions holding one of the map's top peaks",
    good="1 every lesion found, 0 none")


def _artefact_mass(v: MapView) -> float | None:
    on = v.artefacts[v.valid] > 0
    if on.any():
        return M.relevance_mass(v.flat.values, on, v.flat.everywhere)
    return 0.0 if (v.flat.values > 0).any() else None


def _share(kinds: np.ndarray) -> float | None:
    return float((kinds > 0).mean()) if len(kinds) else None


ARTEFACT_METRICS = (
    Metric("artefact_mass", "Mass on artefacts", "Art.mass", "Σ_artefact max(m, 0) / Σ_tissue max(m, 0)",
           "negative values clipped to 0; artefacts: pen ink, folds, blank or blurred (tiling.artefacts)",
           _artefact_mass, plotted=True, better="low",
           meaning="share of the map's positive mass on pen ink, folds or blank tissue",
           good="near 0; the artefacts' share of tissue is what chance gives"),
    Metric("artefact_peak", "Top peak on an artefact", "Art.peak", "1 when the highest peak lies on an artefact",
           "the highest local maximum", lambda v: _share(v.peak_kinds[:1]), better="low",
           meaning="whether the map's strongest point falls on an artefact",
           good="0; {review_at:g} on a slide predicted positive asks for review", review_at=1.0),
    Metric("artefact_peaks", "Peaks on artefacts", "Art.peaks", "peaks on an artefact / peaks",
           "top {n_peaks} local maxima at least {peak_distance_um:g} µm apart", lambda v: _share(v.peak_kinds),
           better="low",
           meaning="share of the map's peaks on an artefact", good="near 0"),
    Metric("artefact_top_patches", "Top patches on artefacts", "Art.top",
           "top patches on an artefact / top patches",
           "the {top_patches} patches of highest score (attention; a CAM's mean over the patch), "
           f"on an artefact when one kind covers >= {PATCH_SHARE:.0%} of it", lambda v: _share(v.top_kinds),
           better="low",
           meaning="share of the most attended patches that lie on an artefact",
           good="near 0; >= {review_at:g} on a slide predicted positive asks for review", review_at=0.5),
)


def top_k_metrics(k: float) -> tuple[Metric, Metric]:
    """IoU and Dice of the top-k fraction of tissue against the lesion (k in (0, 1])."""
    pct = round(k * 100)
    note = TOP_NOTE.format(fraction=f"{k:.1%}")
    meaning, good = f"overlap of the map's top {pct}% of tissue with the lesion", \
        "1 only when the lesion is that large: compare methods"
    return (Metric(f"iou_top{pct}", f"IoU top {pct}%", f"IoU{pct}", "|top ∩ lesion| / |top ∪ lesion|", note,
                   lambda v: v.overlap(k, M.iou), meaning=meaning, good=good, detail=True),
            Metric(f"dice_top{pct}", f"Dice top {pct}%", f"Dice{pct}", "2|top ∩ lesion| / (|top| + |lesion|)", note,
                   lambda v: v.overlap(k, M.dice), meaning=meaning, good=good, detail=True))


def metrics_for(config: AuditConfig) -> dict[str, Metric]:
    """Every metric an audit with `config` records, in report order."""
    tops = [m for k in config.top_k for m in top_k_metrics(k)]
    return {m.name: m for m in (*BASE_METRICS, *tops, LESION_HIT_RATE, *ARTEFACT_METRICS)}


def metric(name: str) -> Metric:
    """The record of a metric key (top-k ones included: iou_top10 -> IoU top 10%)."""
    fixed = {m.name: m for m in (*BASE_METRICS, LESION_HIT_RATE, *ARTEFACT_METRICS)}
    if name in fixed:
        return fixed[name]
    kind, _, pct = name.partition("_top")
    if kind in ("iou", "dice") and pct.isdigit() and 0 < int(pct) <= 100:
        return top_k_metrics(int(pct) / 100)[kind == "dice"]
    raise RegistryError(f"unknown metric {name!r}; known: {', '.join(fixed)}, iou_topN, dice_topN")
