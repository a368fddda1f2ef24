"""Slides that failed for the same reason, grouped: for the summary, run.json and the log.

A failure's reason is its stage, error type and message with the slide's own file path, file
name and id replaced by "<slide>", so that 10,000 missing files give one reason, not 10,000.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

FIRST_IDS = 5  # slide ids listed per reason


def reason(failure: dict[str, Any]) -> str:
    """The failure's message, the slide's path, file stem and id replaced by "<slide>"."""
    message = str(failure.get("message", ""))
    path = str(failure.get("source_path") or "")
    for own in sorted({path, Path(path).stem, str(failure.get("slide_id") or "")} - {""}, key=len, reverse=True):
        message = message.replace(own, "<slide>")
    return message


def group_failures(failures: Iterable[dict[str, Any]], first: int = FIRST_IDS) -> list[dict[str, Any]]:
    """[{stage, error_type, reason, count, slide_ids (the first `first`), message (the first
    slide's own)}], most frequent first."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for failure in failures:
        key = (str(failure.get("stage")), str(failure.get("error_type")), reason(failure))
        group = groups.setdefault(key, {"stage": key[0], "error_type": key[1], "reason": key[2],
                                        "count": 0, "slide_ids": [], "message": failure.get("message")})
        group["count"] += 1
        if len(group["slide_ids"]) < first:
            group["slide_ids"].append(failure.get("slide_id"))
    return sorted(groups.values(), key=lambda g: -g["count"])


def group_line(group: dict[str, Any]) -> str:
    """One line for people: count, stage, reason (the message itself for one slide) and the first ids."""
    text = group["message"] if group["count"] == 1 else group["reason"]
    more = f", and {group['count'] - len(group['slide_ids'])} more" if group["count"] > len(group["slide_ids"]) else ""
    return (f"FAILED {group['count']} slide(s) at {group['stage']} ({group['error_type']}): {text} "
            f"[{', '.join(map(str, group['slide_ids']))}{more}]")
