"""Verdict rates of an ink-shortcut model and a clean model on fresh-seed, ink-independent archives.

For each seed pair (training seed, held-out seed): a shortcut model is trained where pen ink marks
the positives (subtle lesions, `--shortcut-contrast`, so the ink is the easier cue) and a clean
model on an archive whose ink is independent of the label (default lesion contrast); both are
audited (`slideaudit run`, artefact patches kept, as their own pipeline would tile) on a held-out
archive, ink independent of the label, at the default lesion contrast. Printed per pair and in
all:

    shortcut  caught = inked slides REVIEW or FAIL / inked slides;
              named  = of those, the ones whose call rests on pen ink (`without_artefacts.depends`);
              swayed = inked negatives the model calls positive (its ink shortcut at work), and
              of those the ones caught naming pen ink
    clean     train_acc (its training slide accuracy) and pass = PASS slides / all slides, with
              the reasons of the others

A model or audit already in --workdir is reused (rerun the script to reprint its figures).

    python bench/shortcut_rates.py --pairs 11:12,13:14,15:16 [--slides 10] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import subprocess
import sys
from pathlib import Path

from common import workdir

SIZE, SHORTCUT_CONTRAST, TRAIN_SLIDES, EPOCHS = 3072, 0.3, 12, 12


def audit(heldout: Path, model: Path, out: Path) -> dict[str, dict]:
    """`slideaudit run` of `heldout` with `model` into `out`; each slide's audit.json."""
    from tiling.store.records import load_audit

    subprocess.run([str(Path(sys.executable).with_name("slideaudit")), "run", str(heldout), "--model", str(model),
                    "--out", str(out), "--methods", "gradcam", "--set", "stitch.max_side=512",
                    "--set", "impressions.steps=0"], check=False, capture_output=True)
    return {d.name: load_audit(d) for d in sorted((out / "slides").iterdir()) if (d / "audit.json").is_file()}


def one_pair(train_seed: int, heldout_seed: int, slides: int, work: Path) -> dict:
    from explainers.train import TrainConfig, train
    from tiling.samples.archives import write_sample_archive

    models, accuracy = {}, {}
    for name, correlated, contrast in (("shortcut", True, SHORTCUT_CONTRAST), ("clean", False, 1.0)):
        manifest = write_sample_archive(work / f"train-{name}-{train_seed}", TRAIN_SLIDES, train_seed, SIZE,
                                        ink_correlated=correlated, lesion_contrast=contrast)
        folder = work / f"model-{name}-{train_seed}"
        models[name] = folder if (folder / "config.json").is_file() else train(manifest, folder,
                                                                               TrainConfig(epochs=EPOCHS))
        config = json.loads((models[name] / "config.json").read_text())
        accuracy[name] = config["metrics"]["train_slide_accuracy"]
    heldout = write_sample_archive(work / f"heldout-{heldout_seed}", slides, heldout_seed, SIZE)
    with open(heldout, newline="") as f:
        rows = list(csv.DictReader(f))
    inked = {r["slide_id"] for r in rows if r["ink"] == "1"}
    inked_negatives = {r["slide_id"] for r in rows if r["ink"] == "1" and r["label"] == "0"}
    shortcut = audit(heldout, models["shortcut"], work / f"audit-shortcut-{train_seed}-{heldout_seed}")
    clean = audit(heldout, models["clean"], work / f"audit-clean-{train_seed}-{heldout_seed}")
    caught = [s for s in inked if s in shortcut and shortcut[s]["verdict"] in ("REVIEW", "FAIL")]
    named = [s for s in caught if "pen ink" in shortcut[s]["without_artefacts"]["depends"]]
    swayed = [s for s in inked_negatives if s in shortcut and shortcut[s]["prediction"] == 1]
    passed = [s for s, a in clean.items() if a["verdict"] == "PASS"]
    others = collections.Counter(f"{a['verdict']}: {a['verdict_reason']}" for s, a in clean.items()
                                 if a["verdict"] != "PASS")
    return {"pair": f"{train_seed}:{heldout_seed}", "inked": len(inked), "caught": len(caught),
            "named": len(named), "inked_negatives": len(inked_negatives), "swayed": len(swayed),
            "swayed_named": len(set(swayed) & set(named)), "shortcut_train_acc": accuracy["shortcut"],
            "clean_train_acc": accuracy["clean"],
            "slides": len(clean), "passed": len(passed), "not_passed": dict(others)}


def share(a: int, b: int) -> str:
    return f"{a}/{b} ({a / b:.0%})" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="11:12,13:14,15:16", help="training:held-out seeds, comma-separated")
    parser.add_argument("--slides", type=int, default=10, help="slides in each held-out archive")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the archives, models and audits here")
    args = parser.parse_args()
    rows = []
    with workdir(args.workdir, "shortcut-rates-") as work:
        for pair in args.pairs.split(","):
            train_seed, heldout_seed = (int(s) for s in pair.split(":"))
            rows.append(one_pair(train_seed, heldout_seed, args.slides, work))
            r = rows[-1]
            print(f"pair {r['pair']}: shortcut caught {share(r['caught'], r['inked'])}, pen ink named "
                  f"{share(r['named'], r['caught'])}, inked negatives called positive "
                  f"{share(r['swayed'], r['inked_negatives'])} of which caught naming pen ink "
                  f"{share(r['swayed_named'], r['swayed'])} (train acc {r['shortcut_train_acc']:.2f}); clean PASS "
                  f"{share(r['passed'], r['slides'])} (train acc {r['clean_train_acc']:.2f}); "
                  f"others: {r['not_passed'] or 'none'}", flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("inked", "caught", "named", "inked_negatives", "swayed",
                                                  "swayed_named", "slides", "passed")}
    print(f"all: shortcut caught {share(total['caught'], total['inked'])}, pen ink named "
          f"{share(total['named'], total['caught'])}, inked negatives called positive "
          f"{share(total['swayed'], total['inked_negatives'])} of which caught naming pen ink "
          f"{share(total['swayed_named'], total['swayed'])}; clean PASS {share(total['passed'], total['slides'])}")


if __name__ == "__main__":
    main()
