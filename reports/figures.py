"""Report figures as data URIs: heatmap overlays with lesion contours, patch overlays,
colour legends and metric distributions.

Every heatmap is shown on one colour scale: a value's percentile among the map's own values on
tissue (0 = lowest, 1 = highest), so maps in different units (attention, CAM) compare by rank.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage.draw import circle_perimeter
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from tiling.store.maps import COLOUR_MAP

CMAP = COLOUR_MAP
OUTLINE_OUTER, OUTLINE_INNER = (255, 255, 255), (0, 0, 0)  # lesion: white over black, any palette
PEAK_RGB = (255, 255, 255)
PEAK_EDGE = (20, 20, 20)
MARK_COLOURS = (OUTLINE_OUTER, OUTLINE_INNER, PEAK_RGB, PEAK_EDGE)
ALPHA = 0.7
OFF_TISSUE_ALPHA = 0.45  # white veil over the slide where a map has no value
TICKS = (0.0, 0.5, 0.9, 1.0)  # legend ticks: percentiles of the colour scale


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    """An (h, w, 3|4) uint8 image (or a PIL image) as a base64 PNG data URI (lossless)."""
    buffer = io.BytesIO()
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    pil.save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """An (h, w, 3) uint8 image as a JPEG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_data_uri(rgb: np.ndarray, quality: int = 90) -> str:
    """An (h, w, 3) uint8 image as a base64 JPEG data URI (slide views are photographs:
    JPEG is several times smaller and faster to encode than PNG)."""
    return data_uri(jpeg_bytes(rgb, quality), "image/jpeg")


def file_data_uri(path: Path, mime: str) -> str:
    """A file's bytes as a base64 data URI of type `mime`."""
    return data_uri(Path(path).read_bytes(), mime)


def display_shape(shape: tuple[int, int], max_side: int, enlarge: bool = False) -> tuple[int, int]:
    """`shape` scaled so its longer side is at most `max_side` (exactly `max_side` if `enlarge`)."""
    scale = max_side / max(shape) if enlarge else min(1.0, max_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def nearest(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of the first two axes of `a` to `shape` (keeps NaN, labels)."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0], a.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1], a.shape[1] - 1)
    return a[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def percentile_scale(reference: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """x -> its percentile among the N finite `reference` values: #{ref < x} / (N - 1),
    clipped to [0, 1]. Ties take their lowest rank, so a map that is mostly 0 (a ReLU'd CAM)
    shows its zeros at the bottom of the scale, not mid-way. NaN stays NaN."""
    ref = np.sort(np.asarray(reference, np.float64)[np.isfinite(reference)])

    def scale(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if ref.size == 0:
            return np.full(x.shape, np.nan)
        below = np.searchsorted(ref, x, side="left") / max(ref.size - 1, 1)
        return np.where(np.isnan(x), np.nan, np.clip(below, 0, 1))

    return scale


def scaled_nearest(values: np.ndarray, scale: Callable[[np.ndarray], np.ndarray],
                   shape: tuple[int, int]) -> np.ndarray:
    """scale(nearest(values, shape)), computed at the smaller of the two sizes: a per-pixel scale
    commutes with nearest-neighbour resampling, so the result is the same."""
    if values.size <= shape[0] * shape[1]:
        return nearest(scale(values), shape)
    return scale(nearest(values, shape))


def colourise(v01: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] (NaN allowed) -> (h, w, 3) float RGB in [0, 1] of CMAP."""
    return matplotlib.colormaps[CMAP](np.nan_to_num(v01, nan=0.0))[..., :3]


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner boundary of a bool mask, `width` px thick."""
    edge = find_boundaries(mask, mode="inner")
    return ndimage.binary_dilation(edge, iterations=width - 1) & mask if width > 1 else edge


def blend(rgb: np.ndarray, v01: np.ndarray, alpha: float) -> np.ndarray:
    """Float RGB with the colour of `v01` on top at opacity alpha·(0.35 + 0.65·v): low values
    tint the tissue lightly so it stays visible, high values cover it."""
    opacity = alpha * (0.35 + 0.65 * np.nan_to_num(v01, nan=0.0))[..., None]
    return (1 - opacity) * rgb + opacity * colourise(v01)


def line_width(shape: tuple[int, ...]) -> int:
    """Outline and ring width in px for an image of `shape`: 1 px per 400 px of its longer side."""
    return max(1, round(max(shape[:2]) / 400))


def draw_marks(out: np.ndarray, lesion: np.ndarray, peaks: np.ndarray | None = None) -> np.ndarray:
    """Draw on (h, w, 3|4) uint8 `out` in place: the lesion outline as a white line outside a
    black one (seen on any background and by colour-blind readers), each peak (row, col) ringed
    (`draw_rings`). With 4 channels the marks are opaque and the rest is left as it is."""
    width = line_width(lesion.shape)
    opaque = (255,) if out.shape[-1] == 4 else ()
    inner = contour(lesion, width)
    outer = ndimage.binary_dilation(lesion, iterations=width) & ~lesion
    out[outer] = OUTLINE_OUTER + opaque
    out[inner] = OUTLINE_INNER + opaque
    return draw_rings(out, peaks)


def draw_rings(out: np.ndarray, peaks: np.ndarray | None) -> np.ndarray:
    """Ring each peak (row, col) on (h, w, 3|4) uint8 `out` in place: white between dark edges,
    radius max(5, 5·`line_width`) px."""
    radius = max(5, line_width(out.shape) * 5)
    opaque = (255,) if out.shape[-1] == 4 else ()
    for row, col in [] if peaks is None else peaks:
        for r, colour in ((radius - 1, PEAK_EDGE), (radius, PEAK_RGB), (radius + 1, PEAK_RGB),
                          (radius + 2, PEAK_EDGE)):
            rr, cc = circle_perimeter(int(row), int(col), r, shape=out.shape[:2])
            out[rr, cc] = colour + opaque
    return out


def overlay(thumbnail: np.ndarray, v01: np.ndarray | None, lesion: np.ndarray,
            peaks: np.ndarray | None = None, alpha: float = ALPHA) -> np.ndarray:
    """(h, w, 3) uint8: the thumbnail with `v01` blended in where finite (`blend`; off tissue
    the slide is faded), lesion outline and peak rings on top (`draw_marks`)."""
    rgb = thumbnail.astype(np.float64) / 255
    if v01 is not None:
        shown = np.isfinite(v01)[..., None]
        rgb = np.where(shown, blend(rgb, v01, alpha), (1 - OFF_TISSUE_ALPHA) * rgb + OFF_TISSUE_ALPHA)
    return draw_marks(np.rint(rgb * 255).astype(np.uint8), lesion, peaks)


def heat_layer(v01: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """`blend` as a layer to put over the slide: a 256-colour PNG whose index 1 + round(254·v)
    has CMAP's colour at v and opacity alpha·(0.35 + 0.65·v); index 0 (NaN) is the white veil
    of off-tissue areas. Maps stay lossless and small; the slide below stays a JPEG."""
    levels = np.linspace(0, 1, 255)
    palette = np.vstack([[1.0, 1.0, 1.0], colourise(levels)])
    opacity = np.concatenate([[OFF_TISSUE_ALPHA], alpha * (0.35 + 0.65 * levels)])
    index = np.where(np.isfinite(v01), 1 + np.rint(254 * np.nan_to_num(v01, nan=0.0)), 0)
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    image.putpalette(np.rint(palette * 255).astype(np.uint8).ravel().tolist())
    image.info["transparency"] = bytes(np.rint(opacity * 255).astype(np.uint8).tolist())
    return image


def marks_layer(lesion: np.ndarray, peaks: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 4) uint8: `draw_marks` on a transparent layer of `lesion`'s shape."""
    return draw_marks(np.zeros((*lesion.shape, 4), np.uint8), lesion, peaks)


def marks_data_uri(layer: np.ndarray) -> str:
    """A `marks_layer` as a palette PNG data URI: the same pixels (transparent or a mark colour)
    at one byte per pixel to compress instead of four."""
    colours = np.unique(np.array([(0, 0, 0, 0), *((*c, 255) for c in MARK_COLOURS)], np.uint8).view(np.uint32))
    packed = np.ascontiguousarray(layer).view(np.uint32)[..., 0]
    index = np.minimum(np.searchsorted(colours, packed), colours.size - 1)
    if not np.array_equal(colours[index], packed):
        raise ValueError("a marks layer holds a colour that is not in MARK_COLOURS")
    rgba = colours.view(np.uint8).reshape(-1, 4)
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    image.putpalette(rgba[:, :3].ravel().tolist())
    image.info["transparency"] = bytes(rgba[:, 3].tolist())
    return png_data_uri(image)


def patch_overlay(patch: np.ndarray, cam: np.ndarray, scale: Callable[[np.ndarray], np.ndarray],
                  alpha: float = ALPHA) -> np.ndarray:
    """A patch (S, S, 3) with its raw (h, w) CAM, bilinearly upsampled and mapped through the
    slide's percentile `scale`, blended on top (`blend`)."""
    size = patch.shape[:2]
    up = resize(np.asarray(cam, np.float64), size, order=1, mode="edge", anti_aliasing=False)
    return np.rint(blend(patch / 255, scale(up), alpha) * 255).astype(np.uint8)


def css_gradient(steps: int = 11) -> str:
    """The colour scale as a CSS linear-gradient, low on the left."""
    colours = matplotlib.colormaps[CMAP](np.linspace(0, 1, steps))[:, :3]
    stops = [f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f}) {i / (steps - 1):.0%}"
             for i, (r, g, b) in enumerate(colours)]
    return f"linear-gradient(to right, {', '.join(stops)})"


def figure_uri(fig: Any, tight: bool = True) -> str:
    """A matplotlib figure as a PNG data URI, laid out tightly unless `tight` is False (its
    margins set already: a third of the cost of a small figure); the figure is closed."""
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return data_uri(buffer.getvalue(), "image/png")


# the index draws one distribution plot per plotted metric, all alike: fixed margins that fit
# their tick labels (rotated method titles) and title, instead of a tight layout each time
DISTRIBUTION_MARGINS = {"left": 0.13, "right": 0.98, "top": 0.9, "bottom": 0.24}


def distribution_plot(table: pd.DataFrame, metric: str, methods: list[str], labels: list[str],
                      title: str, seed: int = 0) -> str:
    """A box plot with the slides as jittered points, one column per method (tick `labels`),
    as a data URI.

    Points are jittered horizontally with a seeded generator so reruns give the same figure.
    """
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=110)
    data = [table.loc[table["method"] == m, metric].dropna().to_numpy(float) for m in methods]
    shown = [i for i, d in enumerate(data) if d.size]
    if shown:
        ax.boxplot([data[i] for i in shown], positions=[i + 1 for i in shown], widths=0.5,
                   showfliers=False, medianprops={"color": "#1d4ed8"})
    for i, values in enumerate(data):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, values.size), values, s=12, alpha=0.7,
                   color="#334155", zorder=3)
    ax.set_xticks(range(1, len(methods) + 1), labels, rotation=20, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.subplots_adjust(**DISTRIBUTION_MARGINS)
    return figure_uri(fig, tight=False)


def deletion_figure(fractions: list[float], curves: dict[str, list[float]], random_curve: list[float],
                    labels: dict[str, str]) -> Any:
    """Deletion curves p_k / p_0 against the deleted share k (one line per method, `labels` their
    titles, the random baseline dashed) on a y axis from 0 read as plain numbers (no offset such as
    "1e-7+1" when the curves stay near 1), as a matplotlib figure."""
    k = [0.0, *fractions]
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=110)
    for name, curve in curves.items():
        if curve[0] > 0:
            ax.plot(k, np.asarray(curve) / curve[0], marker="o", ms=3, label=labels.get(name, name))
    if random_curve and random_curve[0] > 0:
        ax.plot(k, np.asarray(random_curve) / random_curve[0], "k--", label="random")
    ax.set_ylim(0, max(1.05, ax.get_ylim()[1]))
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.set_xlabel("share of patches deleted (most relevant first)", fontsize=8)
    ax.set_ylabel("p / p(all patches)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def deletion_plot(fractions: list[float], curves: dict[str, list[float]], random_curve: list[float],
                  labels: dict[str, str]) -> str:
    """`deletion_figure` as a PNG data URI."""
    return figure_uri(deletion_figure(fractions, curves, random_curve, labels))


def sanity_plot(layers: list[str], rho: dict[str, list[float | None]],
                spread: dict[str, list[list[float] | None]], labels: dict[str, str]) -> str:
    """Median Spearman ρ of each method's maps with the original ones against the cumulatively
    re-initialised layers (top first; n/a points left out), its range over the draws shaded, as a
    PNG data URI."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=110)
    x = np.arange(len(layers))
    for name, values in rho.items():
        y = np.array([np.nan if v is None else v for v in values], np.float64)
        lines = ax.plot(x, y, marker="o", ms=3, label=labels.get(name, name))
        low, high = (np.array([np.nan if r is None else r[i] for r in spread[name]], np.float64) for i in (0, 1))
        ax.fill_between(x, low, high, color=lines[0].get_color(), alpha=0.15, lw=0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [f"+ {name}" for name in layers], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman ρ with original", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return figure_uri(fig)
