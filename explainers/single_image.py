"""Explain one image region (PNG, JPEG or TIFF) with a slide model.

The region is resized from its resolution `mpp` to the model's (`model.mpp` µm/px), then cut
into the model's `patch`-px tiles: n = ceil(L / P) tiles per axis of length L >= P, starts
round(i (L - P) / (n - 1)), so tiles overlap rather than overhang; a side shorter than P is
padded with white (glass). The tiles form one bag, exactly like a slide's patches: the class
probabilities are softmax (or, for a multi-label head, independent sigmoids) of the A-MIL bag
logits, which for a single tile are the patch's own logits. Maps come from the explain stage's
`BagExplainer` for the bag logit of each target class and are stitched back onto the region
(overlaps averaged).

    >>> image, mpp = read_image(Path("region.png"))
    >>> result = explain_region(image, mpp, model, model_config, RegionConfig(targets=("top5",)))
    >>> result.top(5), result.targets[0].maps["gradcam"].shape      # (H', W') at model mpp
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from explainers.engine import BagExplainer, frozen, slide_target
from explainers.errors import ImageError, ImageTooLarge
from explainers.explain import resolve_device
from explainers.feature_views import activation_views
from explainers.methods.registry import default_methods, parse_methods
from explainers.models.config import ModelConfig
from explainers.models.inputs import normalise, resize
from explainers.models.mil import MILModel
from tiling.slide import resize_rgb, rgba_on_white
from tiling.stitch import PatchGrid

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG", "TIFF")
MODES = ("RGB", "RGBA", "L", "LA", "P")
TOP5 = "top5"
MICROSCOPE_MPP = 20.0  # a recorded resolution coarser than this (µm/px) is a screen dpi, not a microscope's


@dataclass(frozen=True)
class RegionConfig:
    """targets: class names, or "top5" for the five most probable; () = the predicted class.
    methods: registered method names (`explainers.methods.registry`). max_tiles bounds the work per image;
    channels: how many activation views; device: "auto" | "cpu" | "cuda"."""

    targets: tuple[str, ...] = ()
    methods: tuple[str, ...] = field(default_factory=lambda: default_methods("images"))
    max_tiles: int = 256
    channels: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", parse_methods(self.methods))


@dataclass
class TargetView:
    """One explained class: its rank among all classes (1 = most probable), probability, and
    maps {method: (H', W') float32 raw values on the region at the model's mpp}."""

    name: str
    index: int
    rank: int
    probability: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def in_top5(self) -> bool:
        return self.rank <= 5


@dataclass
class RegionExplanation:
    """image: (H, W, 3) uint8 as given; mpp: its µm/px (and whether it was assumed);
    region: (H', W', 3) at the model's mpp; tiles: (N, 2) tile (x, y) on the region;
    logits/probabilities: (C,) of the bag; activations: (k, H', W') maps of `channels`."""

    image: np.ndarray
    mpp: float
    mpp_assumed: bool
    region: np.ndarray
    tiles: np.ndarray
    classes: list[str]
    head: str
    logits: np.ndarray
    probabilities: np.ndarray
    targets: list[TargetView]
    channels: np.ndarray
    activations: np.ndarray

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes as (name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]


def _recorded_mpp(img: Image.Image) -> float | None:
    """µm/px from the file's resolution (dpi) when it is a microscope's, else None."""
    try:
        mpp = 25400.0 / float(img.info["dpi"][0])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return mpp if 0 < mpp <= MICROSCOPE_MPP else None


def read_image(source: Path | bytes, name: str | None = None,
               max_pixels: int = 64_000_000) -> tuple[np.ndarray, float | None]:
    """(RGB uint8 (H, W, 3), recorded µm/px or None) of a PNG, JPEG or TIFF file or its bytes.

    Alpha is composited on white, grey and palette images become RGB. ImageError naming the file
    when it is not such an image, has another mode (16-bit, float, CMYK, 1-bit) or more than
    `max_pixels` pixels. The file is only read.
    """
    name = name or (str(source) if isinstance(source, Path) else "<upload>")
    stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with Image.open(stream, formats=FORMATS) as img:
            if img.mode not in MODES:
                raise ImageError(f"{name}: unsupported image mode {img.mode!r}; save it as 8-bit RGB "
                                 f"(modes {', '.join(MODES)}) PNG, JPEG or TIFF")
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{name}: {img.width} x {img.height} px is more than {max_pixels:,} pixels; "
                                 "crop the region of interest first")
            mpp = _recorded_mpp(img)
            rgba = np.asarray(img.convert("RGBA"))
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file; check the path") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: more than {max_pixels:,} pixels; crop the region of interest first") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a PNG, JPEG or TIFF image; give an RGB image file") from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable PNG, JPEG or TIFF image ({exc}); "
                         "give an RGB image file") from exc
    return rgba_on_white(rgba), mpp


def tile_starts(length: int, patch: int) -> np.ndarray:
    """Tile starts on one axis: ceil(L / P) tiles spread evenly from 0 to L - P (just 0 when L <= P)."""
    n = max(1, math.ceil(length / patch))
    return np.round(np.linspace(0, max(length - patch, 0), n)).astype(np.int64)


def to_model_grid(image: np.ndarray, mpp: float, config: ModelConfig,
                  max_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """(region resized to the model's mpp, tile (x, y) starts (N, 2) on it, row-major);
    ImageTooLarge before any resizing when it would take more than `max_tiles` tiles."""
    scale = mpp / config.mpp
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    xs, ys = tile_starts(size[0], config.patch), tile_starts(size[1], config.patch)
    if len(xs) * len(ys) > max_tiles:
        raise ImageTooLarge(f"the image is {len(xs) * len(ys)} tiles of {config.patch} px at {config.mpp:g} µm/px, "
                            f"more than the limit {max_tiles}; crop it or check its µm/px ({mpp:g})")
    ys, xs = np.meshgrid(ys, xs, indexing="ij")
    return resize_rgb(image, size), np.stack([xs.ravel(), ys.ravel()], axis=1)


def cut_tiles(region: np.ndarray, tiles: np.ndarray, patch: int) -> np.ndarray:
    """(N, P, P, 3) uint8 tiles of `region` at (x, y) starts, padded with white beyond its edge."""
    h, w = region.shape[:2]
    padded = np.full((max(h, patch), max(w, patch), 3), 255, np.uint8)
    padded[:h, :w] = region
    return np.stack([padded[y:y + patch, x:x + patch] for x, y in tiles])


def check_targets(targets: tuple[str, ...], classes: list[str]) -> None:
    """ImageError naming the first target that is neither one of `classes` nor "top5"."""
    for target in targets:
        if target != TOP5 and target not in classes:
            raise ImageError(f"target class {target!r} is not one of the model's classes {classes} (or {TOP5!r})")


def resolve_targets(targets: tuple[str, ...], classes: list[str], probabilities: np.ndarray) -> list[int]:
    """Class indices for target names ("top5" = the five most probable; () = the most probable)."""
    check_targets(targets, classes)
    order = [int(i) for i in np.argsort(-probabilities, kind="stable")]
    wanted: list[int] = []
    for target in targets or (classes[order[0]],):
        wanted += order[:5] if target == TOP5 else [classes.index(target)]
    return list(dict.fromkeys(wanted))


def probabilities_of(logits: np.ndarray, head: str) -> np.ndarray:
    """softmax(logits) for a softmax head, sigmoid(logits) per class for a sigmoid (multi-label) head."""
    logits = np.asarray(logits, np.float64)
    if head == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max())
    return e / e.sum()


def explain_region(image: np.ndarray, mpp: float | None, model: MILModel, model_config: ModelConfig,
                   config: RegionConfig = RegionConfig()) -> RegionExplanation:
    """Predict and explain an RGB region (H, W, 3) uint8 of `mpp` µm/px (None = the model's mpp)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}; "
                         "read files with read_image")
    assumed = mpp is None
    mpp = model_config.mpp if mpp is None else float(mpp)
    if not (math.isfinite(mpp) and mpp > 0):
        raise ImageError(f"resolution {mpp} µm/px is not a positive number; give the image's µm/px")
    region, tiles = to_model_grid(image, mpp, model_config, config.max_tiles)
    device = resolve_device(config.device)
    x = normalise(resize(cut_tiles(region, tiles, model_config.patch), model_config.patch), model_config, device)
    n = len(tiles)
    explainer = BagExplainer(model, model_config.target_layer, config.methods)
    with frozen(model.to(device)):
        bag = explainer.forward([(0, n, x)], n)
        with torch.no_grad():
            logits = model.pool(bag.h)[0].float().cpu().numpy()
        probabilities = probabilities_of(logits, model_config.head)
        wanted = resolve_targets(config.targets, model_config.classes, probabilities)
        # one chunk of all n tiles: maps() yields it once
        raw = [next(explainer.maps(bag, slide_target(model, bag.h, cls), n, lambda lo, hi: x[lo:hi]))[2]
               for cls in wanted]
    order = np.argsort(-probabilities, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(1, len(order) + 1)
    grid = PatchGrid(tiles, float(model_config.patch), 1.0, region.shape[:2])
    coverage = grid.coverage()
    targets = [TargetView(model_config.classes[cls], cls, int(ranks[cls]), float(probabilities[cls]),
                          {name: grid.stitch(values, coverage) for name, values in maps.items()})
               for cls, maps in zip(wanted, raw, strict=True)]
    views = activation_views(explainer.grid(torch.as_tensor(bag.acts)).numpy(), config.channels)
    activations = np.stack([grid.stitch(views.maps[:, i], coverage) for i in range(len(views.channels))])
    log.debug("region %s at %.3g µm/px: %d tiles, top %s", image.shape, mpp, n, model_config.classes[order[0]])
    return RegionExplanation(image, mpp, assumed, region, tiles, list(model_config.classes), model_config.head,
                             logits, probabilities, targets, views.channels, activations)
