"""A real shortcut, caught: a model trained where pen ink marks the positives, against a clean one.

Both learn from subtle lesions (`sample --lesion-contrast`), so the ink is the easier cue; both
are audited as their own pipeline would tile (artefact patches kept) on the negatives of an
archive whose ink is independent of the label. Every inked negative of the shortcut model is
caught, most of them because their call moves without their pen-ink patches, which the flag names;
fewer of the clean model's rest on their ink; with `--drop-artefacts ink` the report says that
dependence was not tested. Properties as shares, on two seed pairs (training archives, held-out
archive).
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


def audit(heldout: Path, model: Path, out: Path, scheduler: str, *extra: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(main, [
        "run", str(heldout), "--model", str(model), "--out", str(out), "--fail-on", "fail", *extra,
        "--group-by", "ink", "--scheduler", scheduler,
        "--methods", "gradcam", "--set", "stitch.max_side=512", "--set", "impressions.steps=0"])
    assert result.exit_code in (0, EXIT_THRESHOLDS), result.output
    return result.exit_code, {d.name: load_audit(d) for d in sorted((out / "slides").iterdir())}


@pytest.mark.slow
# (training archives' seed, held-out archive's seed). Not every pair holds at this size and contrast: with
# (3, 4), (3, 2), (1, 4) and, on one slide, (1, 2) the "clean" model also calls an inked negative
# positive for its ink (the audit rightly flags it), and with (5, 6) one inked negative's ink reaches
# no tissue patch.
@pytest.mark.parametrize(("train_seed", "heldout_seed"), [(1, 2), (7, 8)])
def test_the_audit_catches_an_ink_shortcut_and_tells_it_from_a_clean_model(train_seed: int, heldout_seed: int,
                                                                    shared_cluster: str, tmp_path: Path) -> None:
    config = TrainConfig(epochs=EPOCHS)  # artefact patches stay in the bags: the shortcut can learn the ink
    models = {}
    for name, correlated in (("shortcut", True), ("clean", False)):
        manifest = write_sample_archive(tmp_path / f"train-{name}", TRAIN_SLIDES, train_seed, SIZE,
                                        ink_correlated=correlated, lesion_contrast=CONTRAST)
        models[name] = train(manifest, tmp_path / f"model-{name}", config)
    heldout = negatives(write_sample_archive(tmp_path / "heldout", 8, heldout_seed, SIZE, lesion_contrast=CONTRAST))
    with open(heldout, newline="") as f:
        ink = {r["slide_id"]: r["ink"] == "1" for r in csv.DictReader(f)}
    inked = {sid for sid, has_ink in ink.items() if has_ink}
    assert inked and len(inked) < len(ink)  # negatives with and without ink: the rates compare them

    code, audits = audit(heldout, models["shortcut"], tmp_path / "audit-shortcut", shared_cluster)
    assert code == EXIT_THRESHOLDS
    # the property, as shares of the inked negatives: every one is caught (FAIL), and on most the
    # call moves when the slide is pooled without its pen-ink patches, which the flag names (where it
    # does not, ink under 5 % of a patch stays in the bag and the focus-on-artefact flag is what fires)
    caught = [s for s in inked if audits[s]["verdict"] == "FAIL"]
    named = [s for s in caught if "pen ink" in audits[s]["without_artefacts"]["depends"]]
    assert len(caught) == len(inked), {s: audits[s]["verdict_reason"] for s in inked}
    assert len(named) >= 0.5 * len(inked), {s: audits[s]["without_artefacts"] for s in inked}
    for slide in named:
        assert "pen ink" in {f["flag"]: f for f in audits[slide]["flags"]}["depends_on_artefact"]["message"]
    for slide in ink.keys() - inked:  # every slide has a fold: it is the ink, not any artefact, that counts
        assert not audits[slide]["without_artefacts"]["depends"], audits[slide]["verdict_reason"]

    rates = pd.read_csv(tmp_path / "audit-shortcut" / "subgroups.csv").set_index("value")
    fpr = rates["false_positive_rate"]
    assert rates.loc[1, "false_positives"] == len(inked) and fpr[1] > fpr[0]  # every inked negative called positive

    code, dropped = audit(heldout, models["shortcut"], tmp_path / "audit-dropped", shared_cluster,
                          "--drop-artefacts", "ink")
    for slide in inked:  # patches mostly under ink never reach the model: the report says ink was not tested
        assert dropped[slide]["artefacts"]["dropped_at_tile"] == ["pen ink"]
        page = " ".join((tmp_path / "audit-dropped" / "slides" / slide / "report.html").read_text().split())
        assert "Not tested: whether the prediction rests on pen ink" in page

    # the clean model, trained where ink is independent of the label, can still pick some up (on (1, 2)
    # it calls one inked negative positive for its ink, and the audit says so): what holds is that
    # fewer of its inked negatives rest on their ink than the shortcut model's
    code, clean = audit(heldout, models["clean"], tmp_path / "audit-clean", shared_cluster)
    clean_named = [s for s in inked if "pen ink" in clean[s]["without_artefacts"]["depends"]]
    assert len(clean_named) < len(caught), {s: clean[s]["verdict_reason"] for s in inked}


@pytest.mark.slow
def test_thick_ink_dropped_at_tile_time_leaves_its_dependence_untested(shared_cluster: str, tmp_path: Path) -> None:
    """Filled bands of ink (300-400 µm) on the positives teach the shortcut; on inked negatives the
    default audit FAILs them naming pen ink, and with `--drop-artefacts ink` the patches under the
    band never reach the model: the report says ink dependence was not tested."""
    thick = (300.0, 400.0)
    manifest = write_sample_archive(tmp_path / "train", TRAIN_SLIDES, 1, SIZE, ink_correlated=True,
                                    lesion_contrast=CONTRAST, ink_width_um=thick)
    model = train(manifest, tmp_path / "model", TrainConfig(epochs=EPOCHS))
    heldout = negatives(write_sample_archive(tmp_path / "heldout", 8, 2, SIZE, lesion_contrast=CONTRAST,
                                             ink_width_um=thick))
    with open(heldout, newline="") as f:
        inked = {r["slide_id"] for r in csv.DictReader(f) if r["ink"] == "1"}
    assert inked

    _, audits = audit(heldout, model, tmp_path / "audit", shared_cluster)
    caught = [s for s in inked if audits[s]["verdict"] == "FAIL"
              and "pen ink" in audits[s]["without_artefacts"]["depends"]]
    assert len(caught) >= 0.9 * len(inked), {s: audits[s]["verdict_reason"] for s in inked}

    _, dropped = audit(heldout, model, tmp_path / "audit-dropped", shared_cluster, "--drop-artefacts", "ink")
    for slide in inked:
        assert dropped[slide]["artefacts"]["left_out"]["pen ink"] >= 1  # the band covers whole patches
        page = " ".join((tmp_path / "audit-dropped" / "slides" / slide / "report.html").read_text().split())
        assert "Not tested: whether the prediction rests on pen ink" in page
