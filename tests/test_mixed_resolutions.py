"""One `run` over an archive of slides written at different resolutions, one of them declared
by the manifest because its file records none: every slide tiled at the model's footprint."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import tifffile
import zarr

from conftest import manifest_rows
from explainers.models.config import read_config
from pipeline.config import load_config
from pipeline.runner import run_archive
from tiling.samples.archives import write_sample_archive
from tiling.samples.tiff import write_pyramid_tiff
from tiling.store import PATCHES
from tiling.store.records import load_audit

SIZES = {0.5: 2048, 1.0: 1024, 2.0: 512}  # level-0 µm/px -> width in px: the same 1 mm of tissue


def mixed_archive(root: Path) -> Path:
    """manifest.csv of one positive slide per resolution of SIZES; the 1.0 µm/px one rewritten
    without resolution tags, its `mpp` declared in the manifest."""
    rows = []
    for mpp, size in SIZES.items():
        [row] = manifest_rows(write_sample_archive(root / f"at-{mpp:g}", 1, seed=7, size=size, mpp=mpp))
        row = {"slide_id": f"at-{mpp:g}", "path": row["path"], "label": row["label"],
               "annotation": row["annotation"], "mpp": ""}
        if mpp == 1.0:
            bare = root / "bare.tiff"
            write_pyramid_tiff(bare, tifffile.imread(row["path"], level=0), None)
            row.update(path=str(bare), mpp=str(mpp))
        rows.append(row)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.mark.slow
def test_one_run_audits_slides_of_mixed_resolutions_at_the_model_footprint(model_dir: Path, shared_cluster: str,
                                                                           tmp_path: Path) -> None:
    manifest = mixed_archive(tmp_path / "archive")
    config = load_config(overrides={"stitch.max_side": 256, "run.scheduler": shared_cluster, "impressions.steps": 0,
                                    "explain.methods": ["gradcam"]})
    result = run_archive(manifest, model_dir, tmp_path / "out", config)
    assert result.exit_code == 0 and not result.failed
    model = read_config(model_dir)
    for mpp, source in ((0.5, "file"), (1.0, "manifest"), (2.0, "file")):
        folder = tmp_path / "out" / "slides" / f"at-{mpp:g}"
        attrs = dict(zarr.open_group(folder / PATCHES, mode="r").attrs)
        assert (attrs["mpp"], attrs["patch_size"]) == (model.mpp, model.patch)
        assert (attrs["slide_mpp"], attrs["mpp_source"]) == (mpp, source)
        assert attrs["footprint"] == pytest.approx(model.patch * model.mpp / mpp)
        scales = load_audit(folder / "audit.json")["provenance"]["resolution"]
        assert scales["mpp_source"] == source and scales["model_mpp"] == model.mpp
        assert scales["upsample"] <= 1 and scales["patch_to_model"] == 1.0
