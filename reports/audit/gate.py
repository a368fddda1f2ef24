"""The CI gate: which audited slides meet `run --fail-on` (exit code 4 in `pipeline.errors`).

A criterion is "review" (the slide's verdict is REVIEW or FAIL), "fail" (its verdict is FAIL),
"unchecked" (its verdict is UNCHECKED: nothing to check it against) or the name of a registered
flag (the slide raised it, whatever its verdict there).
"""
from __future__ import annotations

from typing import Any

from reports.audit.flags import FLAGS, SLIDE_VERDICTS
from tiling.errors import ConfigError

# the slide verdicts that meet each criterion
AT_LEAST = {"fail": SLIDE_VERDICTS[:1], "review": SLIDE_VERDICTS[:2], "unchecked": ("UNCHECKED",)}


def check_fail_on(criteria: tuple[str, ...]) -> tuple[str, ...]:
    """`criteria` lower-cased; ConfigError naming the unknown ones and the choices."""
    lowered = tuple(c.strip().lower() for c in criteria)
    unknown = [c for c in lowered if c not in AT_LEAST and c not in FLAGS]
    if unknown:
        raise ConfigError(f"--fail-on / run.fail_on: unknown {', '.join(map(repr, unknown))}; use "
                          f"review, fail, unchecked or flag names ({', '.join(FLAGS)}), comma-separated")
    return lowered


def gate_reasons(audit: dict[str, Any], criteria: tuple[str, ...]) -> list[str]:
    """The criteria this slide's audit.json meets, e.g. ["review", "prediction_wrong"]."""
    raised = {f["flag"] for f in audit.get("flags", [])}
    return [c for c in criteria
            if (c in AT_LEAST and audit.get("verdict") in AT_LEAST[c]) or c in raised]
