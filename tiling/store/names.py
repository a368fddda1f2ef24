"""Every path under OUT, in one table: its name, format version and the module that writes it.

    OUT/
      run.json                        RUN_MANIFEST  the run manifest                  tiling.store.records
      index.html, audit.csv           INDEX, AUDIT_CSV  the archive's page and table  reports.html
      subgroups.csv                   SUBGROUPS_CSV the metrics by subgroup           reports.html
      .lock                           LOCK          held by the run writing OUT       pipeline.runner
      cache/                          CACHE         checksums, the ledger, per-model  pipeline.cache
        slides.json, sha256/, models/<sha>/impressions/impressions.json  (explainers.impressions)
      slides/<slide_id>/              slide_dir
        patches.zarr                  PATCHES       patches, coords, tissue, labels   tiling.store.patches
        explain.zarr                  EXPLAIN       attention, logits, maps           tiling.store.explain
        embeddings.zarr               EMBEDDINGS    encoder embeddings, explain.zarr's format
        maps.zarr                     MAPS          OME-Zarr slide maps and labels    tiling.store.maps
        audit.json                    AUDIT         metrics, flags, verdict           tiling.store.records
        report.html                   REPORT        the slide's page                  reports.html
        focus.geojson                 FOCUS_GEOJSON peaks and lesions for QuPath      reports.geojson
        thumbnail.jpg                 ROW_THUMBNAIL the slide's picture in the index    reports.html
        failure.json                  FAILURE       why a stage of the slide failed   tiling.store.records

FORMAT_VERSIONS gives the format version of each versioned output; `stamps.is_current` and the
readers check it, so an output of another version is recomputed (or its reader asks to rerun).
"""
from __future__ import annotations

from pathlib import Path

PATCHES, EXPLAIN, EMBEDDINGS, MAPS = "patches.zarr", "explain.zarr", "embeddings.zarr", "maps.zarr"
AUDIT, REPORT, FOCUS_GEOJSON, FAILURE = "audit.json", "report.html", "focus.geojson", "failure.json"
RUN_MANIFEST, INDEX, AUDIT_CSV, SUBGROUPS_CSV = "run.json", "index.html", "audit.csv", "subgroups.csv"
LOCK, CACHE, IMPRESSIONS, ROW_THUMBNAIL = ".lock", "cache", "impressions", "thumbnail.jpg"

FORMAT_VERSIONS: dict[str, int] = {
    PATCHES: 3, EXPLAIN: 2, MAPS: 2, AUDIT: 4, FAILURE: 1, RUN_MANIFEST: 1}


def slide_dir(out: Path, slide_id: str) -> Path:
    """The folder holding every stage output of one slide."""
    return Path(out) / "slides" / slide_id


def stage_path(path: Path, name: str) -> Path:
    """`path` when it names a .zarr store itself, else the stage output `name` in that slide folder."""
    path = Path(path)
    return path if path.suffix == ".zarr" else path / name
