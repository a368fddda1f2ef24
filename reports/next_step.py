"""What to do next about a slide, in one line: the `next_step` of the flag that set its verdict.

The flag is the one `reports.audit.flags.slide_verdict` names (the first raised flag of the
slide's verdict); its `Flag.next_step` is filled with the methods it names ({methods}), the
artefact kinds it concerns ({kinds}: "pen ink", {drop}: the --drop-artefacts keys, "ink") and the
slide's folder under OUT/slides ({folder}).
"""
from __future__ import annotations

from typing import Any

from explainers.methods.registry import title as method_title
from reports.audit.flags import SLIDE_VERDICTS, VERDICTS, flag
from tiling.artefacts import ARTEFACT_KINDS
from tiling.config import ARTEFACT_KEYS

NOTHING_TO_DO = "nothing to do: no flag calls for review"
DROP_KEY = {ARTEFACT_KINDS[label]: key for key, label in ARTEFACT_KEYS.items()}  # "pen ink" -> "ink"


def artefact_kinds(audit: dict[str, Any], methods: list[str]) -> list[str]:
    """The artefact kinds the prediction rests on (audit.json's "without_artefacts"), else those
    under the peaks and top patches of `methods` ("artefact_focus"), in ARTEFACT_KINDS order."""
    found = set((audit.get("without_artefacts") or {}).get("depends") or [])
    if not found:
        focus = audit.get("artefact_focus") or {}
        found = {kind for m in methods for part in ("peaks", "top_patches") for kind in focus.get(m, {}).get(part, {})}
    return [kind for kind in ARTEFACT_KINDS.values() if kind in found]


def step_of(raised: dict[str, Any], audit: dict[str, Any]) -> str:
    """A raised flag's `next_step`, filled in for this slide."""
    record = flag(raised["flag"])
    named = raised.get("methods", []) if record.scope == "method" else []  # a slide flag may name suites
    methods = [m for name in named for m in name.split("~")]
    kinds = artefact_kinds(audit, methods)
    return record.next_step.format(
        methods=" and ".join(dict.fromkeys(map(method_title, methods))) or "each method's",
        kinds=" and ".join(kinds) or "the artefacts", drop=",".join(DROP_KEY[k] for k in kinds) or "ink,fold,blank",
        folder=audit.get("folder", audit.get("slide_id", "<id>")))


def next_step(audit: dict[str, Any]) -> str:
    """The next step for a slide of audit.json: the step of its first raised flag of the slide's
    verdict, NOTHING_TO_DO for a PASS."""
    verdict = audit.get("verdict")
    level = VERDICTS[SLIDE_VERDICTS.index(verdict)] if verdict in SLIDE_VERDICTS[:3] else None
    for raised in audit.get("flags", []):
        if raised["verdict"] == level and flag(raised["flag"]).next_step:
            return step_of(raised, audit)
    return NOTHING_TO_DO
