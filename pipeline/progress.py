"""What a run tells the person or the log watching it, on stderr.

Modes: "bar" (a tqdm bar counted in slides, showing each unfinished slide's current stage),
"plain" (one line per finished stage, no carriage returns: for logs such as Airflow's),
"none"; "auto" is "bar" when stderr is a terminal, else "plain".
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pipeline.stages import SlideState

MODES = ("auto", "bar", "plain", "none")
SHOWN = 3  # unfinished slides named beside the bar


def resolve_mode(mode: str) -> str:
    """`mode`, with "auto" made "bar" on a terminal and "plain" elsewhere."""
    if mode != "auto":
        return mode
    return "bar" if sys.stderr.isatty() else "plain"


def say(line: str) -> None:
    """One line on stderr, prefixed "slideaudit: "."""
    click.echo(f"slideaudit: {line}", err=True)


class Progress:
    """The progress of the slides of a run through `stages` (in chain order): `advance` with
    each stage's result."""

    def __init__(self, mode: str, slide_ids: Sequence[str], stages: Sequence[str]) -> None:
        self.mode = resolve_mode(mode)
        self.total = len(slide_ids)
        self.names = list(stages)
        self.stage = dict.fromkeys(slide_ids, self.names[0])  # unfinished slide -> current stage
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm  # here: `say` is used before anything heavy is imported

            self.bar = tqdm(total=self.total, unit="slide", desc="audit", file=sys.stderr, dynamic_ncols=True)

    def advance(self, stage: str, state: SlideState) -> None:
        """Stage `stage` of the slide ended with `state` (after it: the next stage, or finished)."""
        sid = state.record.slide_id
        if sid not in self.stage:  # a failed slide's later stages pass its state through
            return
        finished = state.failure is not None or stage == self.names[-1]
        if finished:
            del self.stage[sid]
        else:
            self.stage[sid] = self.names[self.names.index(stage) + 1]
        if self.mode == "plain":
            done = self.total - len(self.stage)
            what = (f"FAILED: {state.failure['message']}" if state.failure
                    else f"{state.stages[stage]} in {state.seconds[stage]:.1f} s")
            say(f"[{done}/{self.total}] {sid} {stage} {what}")
        elif self.bar is not None:
            if finished:
                self.bar.update(1)
            running = [f"{s} {st}" for s, st in list(self.stage.items())[:SHOWN]]
            self.bar.set_postfix_str(", ".join(running) + (" ..." if len(self.stage) > SHOWN else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
