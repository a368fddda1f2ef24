"""Verdict rates of an ink-shortcut model and a clean model on fresh-seed, ink-independent archives.

For each seed pair (training seed, held-out seed): a shortcut model is trained where pen ink marks
the positives (subtle lesions, `--shortcut-contrast`, so the ink is the easier cue) and a clean
model on an archive whose ink is independent of the label (default lesion contrast); both are
audited (`slideaudit run`, artefact patches kept, as their own pipeline would tile) on a held-out
archive, ink independent of the label, at the default lesion contrast. Printed per pair and in
all:

    shortcut  caught = inked slides REVIEW or FAIL / inked slides;
              named  = of those, the ones whose call rests on pen ink (`without_artefacts.depends`)
    clean     train_acc (its training slide accuracy) and pass = PASS slides / all slides, with
              the reasons of the others

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
        models[name] = train(manifest, work / f"model-{name}-{train_seed}", TrainConfig(epochs=EPOCHS))
        config = json.loads((models[name] / "config.json").read_text())
        accuracy[name] = config["metrics"]["train_slide_accuracy"]
    heldout = write_sample_archive(work / f"heldout-{heldout_seed}", slides, heldout_seed, SIZE)
    with open(heldout, newline="") as f:
        inked = {r["slide_id"] for r in csv.DictReader(f) if r["ink"] == "1"}
    shortcut = audit(heldout, models["shortcut"], work / f"audit-shortcut-{train_seed}-{heldout_seed}")
    clean = audit(heldout, models["clean"], work / f"audit-clean-{train_seed}-{heldout_seed}")
    caught = [s for s in inked if s in shortcut and shortcut[s]["verdict"] in ("REVIEW", "FAIL")]
    named = [s for s in caught if "pen ink" in shortcut[s]["without_artefacts"]["depends"]]
    passed = [s for s, a in clean.items() if a["verdict"] == "PASS"]
    others = collections.Counter(f"{a['verdict']}: {a['verdict_reason']}" for s, a in clean.items()
                                 if a["verdict"] != "PASS")
    return {"pair": f"{train_seed}:{heldout_seed}", "inked": len(inked), "caught": len(caught),
            "named": len(named), "shortcut_train_acc": accuracy["shortcut"], "clean_train_acc": accuracy["clean"],
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
                  f"{share(r['named'], r['caught'])} (train acc {r['shortcut_train_acc']:.2f}); clean PASS "
                  f"{share(r['passed'], r['slides'])} (train acc {r['clean_train_acc']:.2f}); "
                  f"others: {r['not_passed'] or 'none'}", flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("inked", "caught", "named", "slides", "passed")}
    print(f"all: shortcut caught {share(total['caught'], total['inked'])}, pen ink named "
          f"{share(total['named'], total['caught'])}; clean PASS {share(total['passed'], total['slides'])}")


if __name__ == "__main__":
    main()
