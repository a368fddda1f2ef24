"""axe-core, vendored for tests only (tests/vendor/axe-core), run on a Playwright page."""
from __future__ import annotations

from pathlib import Path
from typing import Any

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")


def violations(page: Any, impacts: tuple[str, ...] = BLOCKING) -> list[str]:
    """axe-core's WCAG 2 A/AA violations of `impacts` on `page`, one line each (rule, impact, the first
    few targets). Injected with `evaluate`, which the page's Content-Security-Policy does not govern."""
    page.evaluate(AXE.read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help, "
        "targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))")
    return [f"{v['id']} ({v['impact']}): {v['help']} at {v['targets']}" for v in found if v["impact"] in impacts]
