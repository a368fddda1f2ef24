"""A real shortcut, caught: a model trained where pen ink marks the positives, against a clean one.

Both learn from subtle lesions (`sample --lesion-contrast`), so the ink is the easier cue; both
are audited with `--keep-artefacts` on the negatives of an archive whose ink is independent of
the label. Only the shortcut model's inked negatives depend on their ink.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from explainers.train import TrainConfig, train
from pipeline.cli import main
from pipeline.errors import EXIT_THRESHOLDS
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.store.records import load_audit

SIZE, CONTRAST, TRAIN_SLIDES, EPOCHS = 3072, 0.3, 12, 12


def negatives(manifest: Path) -> Path:
    """A manifest of the archive's negative slides only (paths stay relative to its folder)."""
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["label"] == "0"]
    out = manifest.with_name("negatives.csv")
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        writer.writerows(rows)
    return out


def audit(heldout: Path, model: Path, out: Path, scheduler: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(main, [
        "run", str(heldout), "--model", str(model), "--out", str(out), "--keep-artefacts", "--fail-on", "fail",
        "--group-by", "ink", "--scheduler", scheduler,
        "--methods", "gradcam", "--set", "stitch.max_side=512", "--set", "impressions.steps=0"])
    assert result.exit_code in (0, EXIT_THRESHOLDS), result.output
    return result.exit_code, {d.name: load_audit(d) for d in sorted((out / "slides").iterdir())}


@pytest.mark.slow
def test_the_audit_catches_an_ink_shortcut_and_passes_a_clean_model(shared_cluster: str, tmp_path: Path) -> None:
    config = TrainConfig(epochs=EPOCHS, tile=TileConfig(keep_artefacts=True))  # the shortcut needs the ink
    models = {}
    for name, correlated in (("shortcut", True), ("clean", False)):
        manifest = write_sample_archive(tmp_path / f"train-{name}", TRAIN_SLIDES, 1, SIZE, ink_correlated=correlated,
                                        lesion_contrast=CONTRAST)
        models[name] = train(manifest, tmp_path / f"model-{name}", config)
    heldout = negatives(write_sample_archive(tmp_path / "heldout", 8, 2, SIZE, lesion_contrast=CONTRAST))
    with open(heldout, newline="") as f:
        inked = {r["slide_id"] for r in csv.DictReader(f) if r["ink"] == "1"}
    assert len(inked) == 2

    code, audits = audit(heldout, models["shortcut"], tmp_path / "audit-shortcut", shared_cluster)
    assert code == EXIT_THRESHOLDS
    for slide in inked:
        flags = {f["flag"] for f in audits[slide]["flags"]}
        assert audits[slide]["verdict"] == "FAIL" and "depends_on_artefact" in flags, audits[slide]["verdict_reason"]
        assert audits[slide]["without_artefacts"]["dropped"].get("pen ink", 0) >= 1

    rates = pd.read_csv(tmp_path / "audit-shortcut" / "subgroups.csv").set_index("value")
    fpr = rates["false_positive_rate"]
    assert rates.loc[1, "false_positives"] == 2 and fpr[1] > fpr[0]   # the inked negatives are called positive

    code, audits = audit(heldout, models["clean"], tmp_path / "audit-clean", shared_cluster)
    assert code == 0
    assert all(a["verdict"] != "FAIL" for a in audits.values())
    assert not any(a["without_artefacts"]["depends"] for a in audits.values())
