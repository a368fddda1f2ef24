"""The end-of-run summary of `slideaudit run`: as a dict (`--json`) and as lines for people."""
from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.failures import group_failures, group_line
from pipeline.runner import RunResult
from tiling.store import slide_dir
from tiling.store.records import load_audit

NEEDS_REVIEW = ("FAIL", "REVIEW", "UNCHECKED")


def summarize(result: RunResult) -> dict[str, Any]:
    """wall_seconds; slide counts (current, recomputed, failed, skipped); stage_seconds (summed
    over the slides, s); verdict and flag counts over the audited slides; review (the slides whose
    verdict is FAIL, REVIEW or UNCHECKED); failures (grouped by reason, `pipeline.failures`);
    thresholds_met; exit_code; where the outputs are."""
    audited = [s for s in result.states if not s.failure]
    audits = {s.record.slide_id: load_audit(slide_dir(result.out, s.record.slide_id)) for s in audited}
    seconds: Counter[str] = Counter()
    for state in result.states:
        seconds.update(state.seconds)
    return {
        "wall_seconds": result.seconds,
        "slides": {"current": len(result.current), "recomputed": len(audited) - len(result.current),
                   "failed": len(result.failed), "skipped": len(result.skipped)},
        "stage_seconds": {stage: round(s, 3) for stage, s in seconds.items()},
        "verdicts": dict(Counter(a.get("verdict") for a in audits.values())),
        "flags": dict(Counter(f["flag"] for a in audits.values() for f in a.get("flags", []))),
        "review": [{"slide_id": sid, "verdict": a.get("verdict"), "verdict_reason": a.get("verdict_reason")}
                   for sid, a in audits.items() if a.get("verdict") in NEEDS_REVIEW],
        "failures": group_failures({**s.failure, "slide_id": s.record.slide_id} for s in result.failed if s.failure),
        "thresholds_met": result.gated,
        "exit_code": result.exit_code,
        "index": str(result.index), "audit_csv": str(result.audit_csv), "manifest": str(result.manifest),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for people: counts, time per stage, verdicts, flags, what needs a look (one
    line per failure reason, with its count and first ids), where."""
    n = summary["slides"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"].items()) or "none ran"
    lines = [f"{n['current']} current, {n['recomputed']} recomputed, {n['failed']} failed, "
             f"{n['skipped']} skipped (already audited) in {summary['wall_seconds']:.1f} s",
             f"stages (summed over slides): {stages}",
             "verdicts: " + (", ".join(f"{v} {c}" for v, c in sorted(summary["verdicts"].items())) or "none"),
             "flags: " + (", ".join(f"{f} {c}" for f, c in sorted(summary["flags"].items())) or "none")]
    lines += [f"  {r['verdict']} {r['slide_id']}: {r['verdict_reason']}" for r in summary["review"]]
    lines += [f"  {group_line(group)}" for group in summary["failures"]]
    if summary["thresholds_met"]:
        lines.append(f"{len(summary['thresholds_met'])} slide(s) meet --fail-on (exit 4):")
    lines += [f"  {g['verdict']} {g['slide_id']} ({', '.join(g['met'])}): {g['verdict_reason']}"
              for g in summary["thresholds_met"]]
    lines.append(f"table: {summary['audit_csv']}\nrun manifest: {summary['manifest']}\nindex: {summary['index']}")
    return lines
