"""The run's Dask graph on the session's LocalCluster (`shared_cluster`): slides go through in
manifest order, and the workers keep a slide's state only while a later stage or the index needs
it. The slides are missing files: each fails at tile in milliseconds and its later stages pass
the state through, so the real graph runs in about a second."""
from __future__ import annotations

from pathlib import Path

from distributed import Client

from pipeline.config import PipelineConfig
from pipeline.graph import build_graph, compute
from pipeline.progress import Progress
from pipeline.stages import STAGES, Context, SlideState, run_stage
from tiling.archive import SlideRecord

SLIDES = 16


class Watched(Progress):
    """Progress that records the order slides finish in and, at every stage's end, the number of
    task results the scheduler holds in memory."""

    def __init__(self, client: Client, slide_ids: list[str]) -> None:
        super().__init__("none", slide_ids, list(STAGES))
        self.client, self.finished, self.held = client, [], []

    def advance(self, stage: str, state: SlideState) -> None:
        super().advance(stage, state)
        if state.record.slide_id not in self.stage and state.record.slide_id not in self.finished:
            self.finished.append(state.record.slide_id)
        self.held.append(self.client.run_on_scheduler(
            lambda dask_scheduler: sum(task.state == "memory" for task in dask_scheduler.tasks.values())))


def test_slides_run_in_manifest_order_and_finished_states_are_let_go(shared_cluster: str, tmp_path: Path) -> None:
    records = [SlideRecord(f"s{i:02d}", tmp_path / f"missing-{i}.svs", (i % 2,)) for i in range(SLIDES)]
    ids = [r.slide_id for r in records]
    context = Context(tmp_path / "out", tmp_path, PipelineConfig())
    with Client(shared_cluster) as client:
        client.run(run_stage, "tile", SlideState(records[0]), context)  # every worker imports the stage's code first
        tasks, index = build_graph(records, context, gpu=False)
        watched = Watched(client, ids)
        finals = compute(client, tasks, index, watched)
    assert [s.record.slide_id for s in finals] == ids
    assert all(s.failure and s.failure["stage"] == "tile" for s in finals)
    # each slide finishes within a few places of its manifest place (2 workers: a few slides in flight)
    assert sorted(watched.finished) == ids
    assert max(abs(place - ids.index(sid)) for place, sid in enumerate(watched.finished)) <= 4, watched.finished
    # held once every stage is told: at most the final states the index waits for, not every result
    assert watched.held[-1] <= SLIDES < len(tasks), str(watched.held)
