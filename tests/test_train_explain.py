"""Train the default model on 16 sample slides (seed 1), explain a held-out archive (seed 2):
it classifies the held-out slides, and its attention and slide Grad-CAM fall on the lesions.

The assertions state properties (better than chance, better than a random map), not the values
one generator seed happens to give."""
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import manifest_rows
from explainers.config import ExplainConfig
from explainers.explain import explain_store
from explainers.models.io import load_model
from explainers.train import TrainConfig, train
from reports.audit.metrics import pixel_auroc
from tiling.annotations import rasterize_lesions, read_classified
from tiling.config import TileConfig
from tiling.samples.archives import write_sample_archive
from tiling.store import PatchStore, open_patch_store
from tiling.tile import tile_slide

pytestmark = pytest.mark.slow   # trains a model and tiles + explains a whole held-out archive

METHODS = ("gradcam", "gradcampp", "hirescam", "cam")
TRAIN_SLIDES, HELDOUT_SLIDES = 16, 10


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """The default model trained on 16 sample slides (seed 1): one training run per session."""
    root = tmp_path_factory.mktemp("amil")
    manifest = write_sample_archive(root / "train", slides=TRAIN_SLIDES, seed=1)
    return train(manifest, root / "model", TrainConfig(), stores=root / "stores")


@pytest.fixture(scope="session")
def heldout(tmp_path_factory, trained_model) -> list[tuple[dict, Path]]:
    """(manifest row, slide dir with explain.zarr) for each slide of a held-out archive (seed 2)."""
    root = tmp_path_factory.mktemp("heldout")
    manifest = write_sample_archive(root / "archive", slides=HELDOUT_SLIDES, seed=2)
    explained = []
    for row in manifest_rows(manifest):
        slide_dir = tile_slide(Path(row["path"]), root / "out", TileConfig(), slide_id=row["slide_id"]).parent
        explain_store(slide_dir, trained_model, ExplainConfig(methods=METHODS))
        explained.append((row, slide_dir))
    return explained


def lesion_fraction(store: PatchStore, annotation: Path, cells: int = 8) -> np.ndarray:
    """Fraction (N,) of each patch's footprint inside the annotated lesions (mask at footprint/8)."""
    footprint = float(store.attrs["footprint"])
    down = footprint / cells
    width, height = store.attrs["dimensions"]
    mask = rasterize_lesions(read_classified(annotation)[0], (math.ceil(height / down) + cells,
                                                            math.ceil(width / down) + cells), down)
    integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r, c = (np.round(store.coords[:, 1] / down).astype(int), np.round(store.coords[:, 0] / down).astype(int))
    inside = integral[r + cells, c + cells] - integral[r, c + cells] - integral[r + cells, c] + integral[r, c]
    return inside / cells ** 2


def auroc(values: np.ndarray, lesion: np.ndarray) -> float:
    """AUROC of per-patch `values` as a detector of lesion patches (the audit's own metric)."""
    return pixel_auroc(values[None], lesion[None], np.ones((1, len(values)), bool))


def test_the_model_folder_records_what_training_did(trained_model):
    _, config = load_model(trained_model)
    assert config.classes == ["normal", "lesion"] and config.seed == TrainConfig().seed
    epochs = TrainConfig().epochs
    assert config.metrics["slides"] == TRAIN_SLIDES and len(config.metrics["loss_per_epoch"]) == epochs
    losses = config.metrics["loss_per_epoch"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])                  # training lowered the loss
    # half the training slides are positive: fitting them must beat the majority class clearly
    assert config.metrics["train_slide_accuracy"] >= 0.5 + 0.25
    assert config.mean != [0.5, 0.5, 0.5] and min(config.std) > 0       # measured on the training patches
    assert config.mpp * config.patch == pytest.approx(TileConfig().target[0] * TileConfig().target[1])


def test_heldout_slides_are_classified(heldout):
    hits = [int(zarr.open_group(d / "explain.zarr", mode="r")["slide_logits"][:].argmax()) == int(row["label"])
            for row, d in heldout]
    labels = [int(row["label"]) for row, _ in heldout]
    assert set(labels) == {0, 1}
    # both classes are recognised (not one constant answer), and overall well above chance (0.5):
    # 8 of 10 or better happens by chance with p = 0.055
    for label in (0, 1):
        assert any(hit for hit, y in zip(hits, labels, strict=True) if y == label), (label, hits)
    assert np.mean(hits) >= 0.8, hits


def test_attention_and_gradcam_fall_on_lesions(heldout):
    positives = [(row, d) for row, d in heldout if int(row["label"]) == 1]
    assert len(positives) == HELDOUT_SLIDES // 2                        # even indices are positive
    rng = np.random.default_rng(0)
    observed: dict[str, list[float]] = {"attention": [], "gradcam": []}
    shuffled: dict[str, list[np.ndarray]] = {"attention": [], "gradcam": []}
    for row, slide_dir in positives:
        lesion = lesion_fraction(open_patch_store(slide_dir), Path(row["annotation"])) > 0.5
        assert lesion.any() and not lesion.all(), row["slide_id"]
        group = zarr.open_group(slide_dir / "explain.zarr", mode="r")
        for name, values in [("attention", group["attention"][:]), ("gradcam", group["gradcam"][:].mean((1, 2)))]:
            # lesion patches get more of it than the rest, on every positive slide
            assert values[lesion].mean() > values[~lesion].mean(), (row["slide_id"], name)
            observed[name].append(auroc(values, lesion))
            # the same values on a random map: the patches shuffled, 200 times
            shuffled[name].append(np.array([auroc(rng.permutation(values), lesion) for _ in range(200)]))
    for name in observed:
        # on average over the positive slides, the map ranks lesion patches above the rest better
        # than 99% of random maps with the same values do, and clearly above chance (0.5)
        chance = np.mean(shuffled[name], axis=0)
        assert np.mean(observed[name]) > np.quantile(chance, 0.99), (name, observed[name])
        assert np.mean(observed[name]) > 0.5 + 0.15, (name, observed[name])
