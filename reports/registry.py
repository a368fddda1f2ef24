"""The registries of metrics and flags: one record each, everything else derived from them.

`audit.py` scores and flags through them, `html.py` and the index take titles, glossary and the
key and plotted columns from them, `table.py` takes audit.csv's columns and `validation.py` the
ranges of its suite. An unknown or missing key is an error, never a silent drop.

A metric is scored on a `MapView` (one stitched map against the lesion labels); its note says
how the map was prepared, with `{…}` filled from the audit config (e.g. `{tolerance_um:g}`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reports import metrics as M
from reports.errors import RegistryError
from tiling.artefacts import PATCH_SHARE

if TYPE_CHECKING:
    from reports.config import AuditConfig

VERDICTS = ("fail", "review", "info")  # a raised flag's verdict, worst first
SEVERITIES = {"fail": "error", "review": "warning", "info": "info"}
SLIDE_VERDICTS = ("FAIL", "REVIEW", "PASS")  # a slide's verdict, worst first
UPSAMPLE_LIMIT = 1.5  # model input px per slide px beyond which the model reads invented detail
SCOPES = ("method", "slide")


@dataclass
class MapView:
    """One map (H, W) as the metrics see it: lesion labels (0 = none, k = k-th lesion), the valid
    pixels (tissue where the map is finite), its peaks (row, col), map pixel side in µm, the
    artefact labels (H, W) (0 = none, `tiling.artefacts.ARTEFACT_KINDS`) and the artefact kind
    under each of the method's top patches."""

    values: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    peaks: np.ndarray
    pixel_um: float
    config: AuditConfig
    artefacts: np.ndarray
    top_kinds: np.ndarray

    @functools.cached_property
    def peak_kinds(self) -> np.ndarray:
        """The artefact kind under each peak, highest first."""
        return self.artefacts[self.peaks[:, 0], self.peaks[:, 1]] if len(self.peaks) else np.zeros(0, np.uint8)

    @functools.cached_property
    def lesion(self) -> np.ndarray:
        return self.labels > 0

    @functools.cached_property
    def lesion_share(self) -> float:
        """Share of the valid pixels inside a lesion (0 without valid pixels)."""
        return float(self.lesion[self.valid].mean()) if self.valid.any() else 0.0

    def overlap(self, fraction: float, measure: Callable[[np.ndarray, np.ndarray], float | None]) -> float | None:
        """`measure` (IoU or Dice) of the top-`fraction` region and the lesion; n/a without a lesion."""
        top = M.top_k_mask(self.values, self.valid, fraction) if self.lesion_share else None
        return None if top is None else measure(top, self.lesion & self.valid)


@dataclass(frozen=True)
class Metric:
    """name: key in audit.json and audit.csv; title: for reports; short: index column header;
    formula: one line; note: the map's preprocessing (a format string over the audit config);
    range: the values it can take; key: shown per method in the index; plotted: a distribution
    plot in the index; score: the value on a MapView (None = n/a); meaning and good: the report's
    glossary (what it tells, which values are good and the flag threshold: format strings over
    the audit config); detail: shown behind "more metrics"."""

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

    def preprocessing(self, view: MapView) -> str:
        where = f"tissue pixels at {view.pixel_um:.3g} µm/px, raw stitched values"
        return f"{where}; {self.note.format(**dataclasses.asdict(view.config))}"


TOP_NOTE = "strict top {fraction} of tissue pixels: ties at the cut left out when they overflow it, n/a if none left"
BASE_METRICS = (
    Metric("auroc", "AUROC", "AUROC", "P(a lesion pixel outscores a non-lesion pixel) = U / (P·N)",
           "rank-based, ties count ½", lambda v: M.pixel_auroc(v.values, v.lesion, v.valid),
           key=True, plotted=True, meaning="how well the map's values separate lesion from other tissue",
           good="1 perfect, 0.5 chance, < 0.5 points away; flagged below {min_auroc:g} on a positive slide"),
    Metric("pointing_game", "Pointing game", "PG", "1 when the map's maximum lies on a lesion, else 0",
           "hit within {tolerance_um:g} µm of lesion on tissue, any pixel tied at the maximum counts",
           lambda v: M.pointing_game(v.values, v.lesion, v.valid, v.config.tolerance_um / v.pixel_um),
           key=True, plotted=True, meaning="whether the map's strongest point falls on a lesion",
           good="1 hit; a miss (0) flags the method on a positive slide"),
    Metric("relevance_mass", "Relevance mass", "Mass", "Σ_lesion max(m, 0) / Σ_tissue max(m, 0)",
           "negative values clipped to 0, no normalisation",
           lambda v: M.relevance_mass(v.values, v.lesion, v.valid), key=True, plotted=True,
           meaning="share of the map's positive mass inside the lesions",
           good="near 1; the lesion's share of tissue is what chance gives"),
    Metric("rank_accuracy", "Rank accuracy", "Rank", "|top-K pixels ∩ lesion| / K, K = |lesion|",
           "top-|lesion| pixels, ties at the cut shared pro rata",
           lambda v: M.relevance_rank_accuracy(v.values, v.lesion, v.valid), plotted=True,
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
    "top {n_peaks} local maxima at least {peak_distance_um:g} µm apart",
    lambda v: M.lesion_hit_rate(v.peaks, v.labels, v.valid), plotted=True,
    meaning="share of the lesions holding one of the map's top peaks",
    good="1 every lesion found, 0 none")


def _artefact_mass(v: MapView) -> float | None:
    on = (v.artefacts > 0) & v.valid
    if on.any():
        return M.relevance_mass(v.values, on, v.valid)
    return 0.0 if (np.asarray(v.values)[v.valid] > 0).any() else None


def _share(kinds: np.ndarray) -> float | None:
    return float((kinds > 0).mean()) if len(kinds) else None


ARTEFACT_METRICS = (
    Metric("artefact_mass", "Mass on artefacts", "Art.mass", "Σ_artefact max(m, 0) / Σ_tissue max(m, 0)",
           "negative values clipped to 0; artefacts: pen ink, folds, blank or blurred (tiling.artefacts)",
           _artefact_mass, plotted=True, meaning="share of the map's positive mass on pen ink, folds or blank tissue",
           good="near 0; the artefacts' share of tissue is what chance gives"),
    Metric("artefact_peak", "Top peak on an artefact", "Art.peak", "1 when the highest peak lies on an artefact",
           "the highest local maximum", lambda v: _share(v.peak_kinds[:1]),
           meaning="whether the map's strongest point falls on an artefact",
           good="0; 1 on a slide predicted positive asks for review"),
    Metric("artefact_peaks", "Peaks on artefacts", "Art.peaks", "peaks on an artefact / peaks",
           "top {n_peaks} local maxima at least {peak_distance_um:g} µm apart", lambda v: _share(v.peak_kinds),
           meaning="share of the map's peaks on an artefact", good="near 0"),
    Metric("artefact_top_patches", "Top patches on artefacts", "Art.top",
           "top patches on an artefact / top patches",
           "the {top_patches} patches of highest score (attention; a CAM's mean over the patch), "
           f"on an artefact when one kind covers >= {PATCH_SHARE:.0%} of it", lambda v: _share(v.top_kinds),
           meaning="share of the most attended patches that lie on an artefact",
           good="near 0; >= 0.5 on a slide predicted positive asks for review"),
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


@dataclass(frozen=True)
class FlagInputs:
    """What the flag rules read: the slide's label and prediction, each method's scores
    ({method: {metric: {"value", ...}}}), method agreement pairs, validation suites, config,
    the number of annotated lesions lying on tissue, the methods no better than random at
    deletion (`explainers.faithfulness`), the slide's resolution record (`reports.audit.resolution`),
    its prediction without the patches on artefacts (`reports.audit.without_artefacts`; None
    without the model) and the methods whose maps survive the model's randomisation
    (`explainers.sanity`)."""

    label: int | None
    prediction: int
    scores: dict[str, dict[str, dict[str, Any]]]
    pairs: list[dict[str, Any]]
    suites: list[dict[str, Any]]
    config: AuditConfig
    lesions_on_tissue: int = 0
    unfaithful: list[str] = field(default_factory=list)
    resolution: dict[str, Any] = field(default_factory=dict)
    artefact: dict[str, Any] | None = None
    insensitive: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Flag:
    """name: key in audit.json; title; meaning (for the report glossary); verdict: what the flag
    makes of the slide: "fail" (the result cannot be trusted), "review" (a person should look) or
    "info" (said, never a warning); verdict_without_lesion: the verdict instead on a slide without
    a lesion on tissue (None = the same); scope: "method" (names the methods concerned) or
    "slide"; rule: FlagInputs -> (methods, message) when raised, else None (None for flags the
    index raises itself)."""

    name: str
    title: str
    meaning: str
    verdict: str
    scope: str
    rule: Callable[[FlagInputs], tuple[list[str], str] | None] | None = None
    verdict_without_lesion: str | None = None

    def __post_init__(self) -> None:
        for value in (self.verdict, self.verdict_without_lesion or self.verdict):
            if value not in VERDICTS:
                raise RegistryError(f"flag {self.name!r}: verdict {value!r} is not one of {VERDICTS}")

    @property
    def severity(self) -> str:
        """"error" for a fail, "warning" for a review, "info" for information."""
        return SEVERITIES[self.verdict]

    def verdict_on(self, lesions_on_tissue: int) -> str:
        """The verdict on a slide with that many lesions on its tissue."""
        return self.verdict if lesions_on_tissue or self.verdict_without_lesion is None else self.verdict_without_lesion


def _focus_outside(f: FlagInputs) -> tuple[list[str], str] | None:
    outside = [name for name, s in f.scores.items() if s["pointing_game"]["value"] == 0.0
               or (s["auroc"]["value"] is not None and s["auroc"]["value"] < f.config.min_auroc)]
    return (outside, f"maximum off the lesion or AUROC < {f.config.min_auroc:g}: {', '.join(outside)}"
            ) if outside else None


def _focus_on_artefact(f: FlagInputs) -> tuple[list[str], str] | None:
    if f.prediction == 0:
        return None
    on = [name for name, s in f.scores.items() if s.get("artefact_peak", {}).get("value") == 1.0
          or (s.get("artefact_top_patches", {}).get("value") or 0) >= 0.5]
    return (on, f"predicted positive with the top peak or half the top patches on an artefact: {', '.join(on)}"
            ) if on else None


def _depends_on_artefact(f: FlagInputs) -> tuple[list[str], str] | None:
    a = f.artefact
    if not a or not a["depends"]:
        return None
    name = a["before"]["prediction_name"]
    dropped = ", ".join(f"{n} on {kind}" for kind, n in a["dropped"].items())
    return [], (f"without its {dropped} patch(es), p({name}) goes from {a['before']['probabilities'][name]:.3f} "
                f"to {a['after']['probabilities'][name]:.3f}"
                + (f": predicted {a['after']['prediction_name']} instead" if a["flipped"] else
                   f", more than {a['max_change']:g}"))


def _disagree(f: FlagInputs) -> tuple[list[str], str] | None:
    pairs = [f"{p['a']}~{p['b']}" for p in f.pairs
             if p["spearman"] is not None and p["spearman"] < f.config.min_spearman]
    return (pairs, f"Spearman ρ < {f.config.min_spearman:g}: {', '.join(pairs)}") if pairs else None


def _prediction_wrong(f: FlagInputs) -> tuple[list[str], str] | None:
    if f.label is None or f.prediction == f.label:
        return None
    return [], f"predicted class {f.prediction}, label {f.label}"


def _unfaithful(f: FlagInputs) -> tuple[list[str], str] | None:
    if not f.unfaithful:
        return None
    margin = f.config.faithfulness.margin
    return f.unfaithful, (f"deleting their top patches lowers the prediction no more than random deletion "
                          f"(area not {margin:g} below random): {', '.join(f.unfaithful)}")


def _insensitive(f: FlagInputs) -> tuple[list[str], str] | None:
    if not f.insensitive:
        return None
    return f.insensitive, (f"maps barely change when the model's top layers are re-initialised "
                           f"(Spearman ρ > {f.config.sanity.max_rho:g}): {', '.join(f.insensitive)}")


def _label_mismatch(f: FlagInputs) -> tuple[list[str], str] | None:
    if f.label is None or (f.label > 0) == (f.lesions_on_tissue > 0):
        return None
    if f.label > 0:
        return [], f"labelled positive (class {f.label}), no lesion annotated on tissue"
    return [], f"labelled negative, {f.lesions_on_tissue} lesion(s) annotated on tissue"


UPSAMPLE_LIMIT = 1.5  # model input px per slide px beyond which the model reads invented detail


def _upsampled(f: FlagInputs) -> tuple[list[str], str] | None:
    r = f.resolution
    if (r.get("upsample") or 0) <= UPSAMPLE_LIMIT:
        return None
    return [], (f"the model reads {r['model_mpp']:g} µm/px, the slide's pixels are {r['level_mpp']:.3g} µm/px "
                f"(level {r['level']}): its input is upsampled {r['upsample']:.1f}x")


def _validation_failed(f: FlagInputs) -> tuple[list[str], str] | None:
    failed = [s["suite"] for s in f.suites if not s["success"]]
    return (failed, f"failed checks: {', '.join(failed)}") if failed else None


FLAGS: dict[str, Flag] = {flag.name: flag for flag in (
    Flag("focus_outside_lesion", "Focus outside lesion",
         "On a slide with lesions, the method's maximum misses them or its pixel AUROC is below audit.min_auroc.",
         "review", "method", _focus_outside),
    Flag("focus_on_artefact", "Focus on an artefact",
         "The slide is predicted positive and the method's highest peak, or half its top patches, lie on pen "
         "ink, a fold or a blank or blurred region: the positive call may rest on the artefact.",
         "review", "method", _focus_on_artefact),
    Flag("methods_disagree", "Methods disagree",
         "Two methods' maps rank the tissue differently (Spearman ρ below audit.min_spearman): a "
         "reason to review a slide with lesions; on a slide without any, where no method has a "
         "lesion to find, information only.",
         "review", "method", _disagree, verdict_without_lesion="info"),
    Flag("prediction_wrong", "Prediction wrong", "The slide's predicted class differs from its label.",
         "fail", "slide", _prediction_wrong),
    Flag("depends_on_artefact", "Depends on an artefact",
         "Pooling the slide without the patches that lie on an artefact (only the MIL head runs again) flips "
         "the predicted class or moves its probability by more than audit.max_artefact_change: the prediction "
         "rests on pen ink, a fold or a blank or blurred region, not on the tissue.",
         "fail", "slide", _depends_on_artefact),
    Flag("unfaithful", "No better than random",
         "Deleting the patches the method ranks highest lowers the explained class's probability no more "
         "than deleting random patches: its ranking does not find what the prediction rests on.",
         "review", "method", _unfaithful),
    Flag("insensitive_to_model", "Insensitive to the model",
         "The method's maps stay nearly the same when the MIL head and the top encoder stage are "
         "re-initialised with random weights (model-randomisation check, Adebayo et al. 2018): they "
         "show the input, not what the model learnt. Information: it judges the method on this "
         "model (checked on a sample of slides), not the slide's prediction.",
         "info", "method", _insensitive),
    Flag("label_annotation_mismatch", "Label and annotations disagree",
         "The slide is labelled positive but no annotated lesion lies on its tissue, or labelled "
         "negative with a lesion annotated on its tissue: the label, the annotation file or its scale "
         "is wrong, and the lesion metrics cannot be read as they stand.",
         "review", "slide", _label_mismatch),
    Flag("upsampled", "Upsampled input",
         f"The model reads finer pixels than the slide has (more than {UPSAMPLE_LIMIT:g}x upsampled): "
         "its input holds interpolated detail, so its predictions and maps may not be its usual ones.",
         "review", "slide", _upsampled),
    Flag("validation_failed", "Validation failed",
         "A great-expectations check of the slide's stores failed; its numbers cannot be trusted.",
         "fail", "slide", _validation_failed),
    Flag("table_check_failed", "Table check failed",
         "The archive's audit.csv check found a problem in this slide's rows.", "fail", "slide"),
    Flag("failed", "Failed", "A stage of the slide failed; the message says which and what to do.",
         "fail", "slide"),
)}


def flag(name: str) -> Flag:
    """The record of flag `name`; RegistryError when unknown."""
    if name not in FLAGS:
        raise RegistryError(f"unknown flag {name!r}; known: {', '.join(FLAGS)}")
    return FLAGS[name]


def raise_flags(inputs: FlagInputs) -> list[dict[str, Any]]:
    """Every flag whose rule fires: [{"flag", "verdict", "severity", "methods", "message"}],
    registry order; the verdict is the flag's on this slide (`Flag.verdict_on`)."""
    raised = []
    for record in FLAGS.values():
        found = record.rule(inputs) if record.rule is not None else None
        if found is not None:
            methods, message = found
            verdict = record.verdict_on(inputs.lesions_on_tissue)
            raised.append({"flag": record.name, "verdict": verdict, "severity": SEVERITIES[verdict],
                           "methods": methods, "message": message})
    return raised


def slide_verdict(raised: list[dict[str, Any]]) -> tuple[str, str]:
    """(verdict, reason) of a slide from its raised flags: "FAIL" when a flag's verdict is "fail",
    else "REVIEW" when one is "review", else "PASS" ("info" flags never count). The reason names
    the first flag of that verdict, "Title: message", and how many more there are."""
    for level in VERDICTS[:2]:
        hits = [f for f in raised if f["verdict"] == level]
        if hits:
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            return SLIDE_VERDICTS[VERDICTS.index(level)], f"{flag(hits[0]['flag']).title}: {hits[0]['message']}{more}"
    return SLIDE_VERDICTS[-1], "no flag calls for review"
