"""The registry of flags: one record each, with the rule that raises it and the verdict it makes
of the slide; `audit.py` raises them, the reports, the index and the CI gate (`reports.audit.gate`)
read their titles, meanings and verdicts from here. An unknown flag is an error.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reports.audit.registry import metric
from reports.errors import RegistryError

if TYPE_CHECKING:
    from reports.audit.config import AuditConfig

VERDICTS = ("fail", "review", "unchecked", "info")  # a raised flag's verdict, worst first
SEVERITIES = {"fail": "error", "review": "warning", "unchecked": "warning", "info": "info"}
SLIDE_VERDICTS = ("FAIL", "REVIEW", "UNCHECKED", "PASS")  # a slide's verdict, worst first
UPSAMPLE_LIMIT = 1.5  # model input px per slide px beyond which the model reads invented detail


@dataclass(frozen=True)
class FlagInputs:
    """What the flag rules read: the slide's label and prediction, each method's scores
    ({method: {metric: {"value", ...}}}), method agreement pairs, validation suites, config,
    the number of annotated lesions lying on tissue, the methods no better than random at
    deletion (`explainers.faithfulness`), the slide's resolution record (`reports.audit.stage.resolution`),
    its prediction without the patches on artefacts (`reports.audit.stage.without_artefacts`; None
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
    makes of the slide: "fail" (the result cannot be trusted), "review" (a person should look),
    "unchecked" (nothing to check the slide against: never PASS) or "info" (said, never a
    warning); verdict_without_lesion: the verdict instead on a slide without a lesion on tissue
    (None = the same); scope: "method" (names the methods concerned) or
    "slide"; rule: FlagInputs -> (methods, message) when raised, else None (None for flags the
    index raises itself); next_step: what to do about it, one line for the reports (a format string
    over {methods}, {kinds}, {drop} and {folder}: `reports.next_step`)."""

    name: str
    title: str
    meaning: str
    verdict: str
    scope: str
    rule: Callable[[FlagInputs], tuple[list[str], str] | None] | None = None
    verdict_without_lesion: str | None = None
    next_step: str = ""

    def __post_init__(self) -> None:
        for value in (self.verdict, self.verdict_without_lesion or self.verdict):
            if value not in VERDICTS:
                raise RegistryError(f"flag {self.name!r}: verdict {value!r} is not one of {VERDICTS}")

    def verdict_on(self, lesions_on_tissue: int) -> str:
        """The verdict on a slide with that many lesions on its tissue."""
        return self.verdict if lesions_on_tissue or self.verdict_without_lesion is None else self.verdict_without_lesion


def _focus_outside(f: FlagInputs) -> tuple[list[str], str] | None:
    outside = [name for name, s in f.scores.items() if s["pointing_game"]["value"] == 0.0
               or (s["auroc"]["value"] is not None and s["auroc"]["value"] < f.config.min_auroc)]
    return (outside, f"maximum off the lesion or AUROC < {f.config.min_auroc:g}: {', '.join(outside)}"
            ) if outside else None


ARTEFACT_FOCUS = {m.name: m.review_at for m in map(metric, ("artefact_peak", "artefact_top_patches"))
                  if m.review_at is not None}  # the metrics whose review_at raise focus_on_artefact
ARTEFACT_FOCUS_TEXT = f"the top peak or at least {ARTEFACT_FOCUS['artefact_top_patches']:.0%} of the top patches"


def _focus_on_artefact(f: FlagInputs) -> tuple[list[str], str] | None:
    if f.prediction == 0:
        return None
    on = [name for name, s in f.scores.items()
          if any((s.get(key, {}).get("value") or 0) >= at for key, at in ARTEFACT_FOCUS.items())]
    return (on, f"predicted positive with {ARTEFACT_FOCUS_TEXT} on an artefact: {', '.join(on)}") if on else None


def _depends_on_artefact(f: FlagInputs) -> tuple[list[str], str] | None:
    a = f.artefact
    if not a or not a["depends"]:
        return None
    alone = [kind for kind in a["depends"] if a["kinds"][kind]["depends"]]
    moves = [(f"{a['kinds'][kind]['dropped']} {kind}", a["kinds"][kind]) for kind in alone] or [
        (" and ".join(f"{a['kinds'][kind]['dropped']} {kind}" for kind in a["depends"]), a["all"])]
    name = a["before"]["prediction_name"]
    p = a["before"]["probabilities"][name]
    return [], "; ".join(
        f"without its {what} patch(es), p({name}) goes from {p:.3f} to {r['after']['probabilities'][name]:.3f}"
        + (f": predicted {r['after']['prediction_name']} instead" if r["flipped"]
           else f", more than {a['max_change']:g}") for what, r in moves)


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


def _not_checked(f: FlagInputs) -> tuple[list[str], str] | None:
    if f.label is not None or f.lesions_on_tissue:
        return None
    return [], "no label and no lesion annotated on its tissue: neither the prediction nor the focus was checked"


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
         "review", "method", _focus_outside,
         next_step="compare the {methods} map with the lesion outline in the report; if "
         "the annotation is right, the model looks elsewhere: review the slide before trusting its prediction"),
    Flag("focus_on_artefact", "Focus on an artefact",
         f"The slide is predicted positive and {ARTEFACT_FOCUS_TEXT} lie on pen ink, a fold or a blank or "
         "blurred region: the positive call may rest on the artefact.",
         "review", "method", _focus_on_artefact,
         next_step="re-audit without {kinds}: slideaudit run ... --drop-artefacts {drop}"),
    Flag("methods_disagree", "Methods disagree",
         "Two methods' maps rank the tissue differently (Spearman ρ below audit.min_spearman): a "
         "reason to review a slide with lesions; on a slide without any, where no method has a "
         "lesion to find, information only.",
         "review", "method", _disagree, verdict_without_lesion="info",
         next_step="compare the maps side by side in the report: trust only the regions where the methods agree"),
    Flag("prediction_wrong", "Prediction wrong", "The slide's predicted class differs from its label.",
         "fail", "slide", _prediction_wrong,
         next_step="check the slide's label (manifest column label) and look at the slide "
         "where the model looks: slideaudit serve --reports OUT"),
    Flag("depends_on_artefact", "Depends on an artefact",
         "Pooling the slide without the patches that lie on one kind of artefact, each kind in turn and all "
         "together (only the MIL head runs again), flips the predicted class or moves its probability by more "
         "than audit.max_artefact_change: the prediction rests on that kind (pen ink, a fold or a blank or "
         "blurred region), not on the tissue. The message names the kind.",
         "fail", "slide", _depends_on_artefact,
         next_step="re-audit without {kinds}: slideaudit run ... --drop-artefacts {drop}"),
    Flag("unfaithful", "No better than random",
         "Deleting the patches the method ranks highest lowers the explained class's probability no more "
         "than deleting random patches: its ranking does not find what the prediction rests on.",
         "review", "method", _unfaithful,
         next_step="do not read {methods} as what the prediction rests on: see the deletion plot in the report"),
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
         "review", "slide", _label_mismatch,
         next_step="fix the label (manifest column label) or the annotation file or its "
         "scale, then re-audit: slideaudit run ..."),
    Flag("not_checked", "Not checked",
         "The slide has no label and no lesion annotated on its tissue: neither its prediction nor where "
         "the model looks could be compared with anything, so it cannot pass. Give it a label (manifest "
         "column `label`) or lesion annotations to check it.",
         "unchecked", "slide", _not_checked,
         next_step="add a label (manifest column label) or lesion annotations for this "
         "slide, then re-audit: slideaudit run ..."),
    Flag("upsampled", "Upsampled input",
         f"The model reads finer pixels than the slide has (more than {UPSAMPLE_LIMIT:g}x upsampled): "
         "its input holds interpolated detail, so its predictions and maps may not be its usual ones.",
         "review", "slide", _upsampled,
         next_step="check the slide's resolution (--slide-mpp) or use a model trained at the slide's µm/px"),
    Flag("validation_failed", "Validation failed",
         "A great-expectations check of the slide's stores failed; its numbers cannot be trusted.",
         "fail", "slide", _validation_failed,
         next_step="see the failed check under Validation in the report; remove "
         "OUT/slides/{folder} and re-run: slideaudit run ..."),
    Flag("table_check_failed", "Table check failed",
         "The archive's audit.csv check found a problem in this slide's rows.", "fail", "slide",
         next_step="see Table check in the index; remove OUT/slides/{folder}/audit.json "
         "and re-run: slideaudit run ..."),
    Flag("failed", "Failed", "A stage of the slide failed; the message says which and what to do.",
         "fail", "slide", next_step="fix what the message names, then re-run: slideaudit -v run ... "
         "(the traceback, if any, is in OUT/slides/{folder}/failure.json)"),
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
    """(verdict, reason) of a slide from its raised flags: the worst of their verdicts ("fail" ->
    "FAIL", "review" -> "REVIEW", "unchecked" -> "UNCHECKED"), else "PASS" ("info" flags never
    count). The reason names the first flag of that verdict, "Title: message", and how many more
    there are."""
    for level in VERDICTS[:3]:
        hits = [f for f in raised if f["verdict"] == level]
        if hits:
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            return SLIDE_VERDICTS[VERDICTS.index(level)], f"{flag(hits[0]['flag']).title}: {hits[0]['message']}{more}"
    return SLIDE_VERDICTS[-1], "no flag calls for review"
