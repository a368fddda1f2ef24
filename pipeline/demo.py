"""The demo: sample slides, a small model trained on them, an audit of a held-out archive.

    OUT/train-slides/    16 sample slides (seed 1) with annotations and manifest.csv
    OUT/heldout-slides/  8 sample slides (seed 2), never seen in training; audit-manifest.csv lists them
                         with the last one unlabelled and unannotated, as an archive's slide of
                         unknown diagnosis (its verdict: UNCHECKED)
    OUT/train-store/     the training slides' patch stores
    OUT/model/           the trained A-MIL model (kept on a rerun; delete it to retrain)
    OUT/audit/           the audit of the held-out archive: index.html, audit.csv, run.json
Every step skips what is already there, so a rerun is quick.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from explainers.train import TrainConfig, train
from pipeline.config import PipelineConfig
from pipeline.runner import RunResult, run_archive
from tiling.samples.archives import write_sample_archive

log = logging.getLogger(__name__)
TRAIN_SLIDES, TRAIN_SEED = 16, 1
HELDOUT_SLIDES, HELDOUT_SEED = 8, 2
# maps of at most 2048 px a side (~2 µm per map px on the sample slides) are plenty for the
# reports' 640 px figures and keep stitch/audit/report quick on 2 cores
DEMO_DEFAULTS = {"stitch.max_side": 2048}


def run_demo(out: Path, config: PipelineConfig) -> RunResult:
    """Write the sample archives, train the model (unless OUT/model exists), audit the held-out
    slides with `config` into OUT/audit."""
    out = Path(out)
    train_manifest = write_sample_archive(out / "train-slides", TRAIN_SLIDES, TRAIN_SEED)
    heldout = write_sample_archive(out / "heldout-slides", HELDOUT_SLIDES, HELDOUT_SEED)
    model_dir = out / "model"
    if (model_dir / "config.json").is_file():
        log.info("%s: model exists; delete the folder to train again", model_dir)
    else:
        train(train_manifest, model_dir, TrainConfig(tile=config.tile), stores=out / "train-store")
    return run_archive(with_unknown_slide(heldout), model_dir, out / "audit", config)


def with_unknown_slide(manifest: Path) -> Path:
    """`manifest` as audit-manifest.csv beside it, its last slide without label and annotations (written
    only when it differs, so a rerun finds everything current)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[-1].update({"label": "", "annotation": "", "annotation_xml": ""})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    audited = manifest.with_name("audit-manifest.csv")
    if not audited.is_file() or audited.read_text() != text.getvalue():
        audited.write_text(text.getvalue())
    return audited
