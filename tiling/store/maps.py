"""maps.zarr: a slide's stitched maps, written by the stitch stage (zarr v3, OME-Zarr 0.5).

One OME-Zarr image per map (tiling.store.ome), each with a resolution pyramid, all on one
(H, W) grid of D level-0 px per map px at full resolution (pixel_um = D × level-0 mpp). The
images are the groups "0", "1", ... of an NGFF collection (bioformats2raw.layout 3), in the
order below, each named in its metadata; attrs["images"] maps a name to its group path:

    attention        (H, W) float32 A-MIL attention, NaN off tissue
    attention_rank   (H, W) float32 its percentile rank among patches, 0..1
    <method>         (H, W) float32 raw values of each CAM method of explain.zarr
    thumbnail        (3, H, W) uint8 RGB of the slide
    thumbnail/labels/tissue     (H, W) uint8 NGFF label, 1 where a patch covers the pixel
    thumbnail/labels/lesion     (H, W) uint16 NGFF label, k on the k-th annotated lesion
    thumbnail/labels/artefacts  (H, W) uint8 NGFF label, when the stitch stage writes it
    OME              the collection: "series" (the image groups) and METADATA.ome.xml (their
                     names, sizes and pixel size in µm), so a viewer finds them all
    attrs            slide_id, dimensions (level-0 W, H), downsample (D), pixel_um, shape (H, W),
                     methods, heatmaps (attention, attention_rank, methods), lesion_names,
                     artefact_kinds ({label: name}), images ({name: group path}), the stamp
                     (config_hash, source_sha256), files and sealed_ns (the record of its files,
                     `tiling.store.stamps.seal`), format_version (FORMAT_VERSION)
Version 3 added the record of its files.

Heatmaps carry a display window (omero: 1st to 99th percentile of the finite values, the full
range as min/max, colour map COLOUR_MAP); masks are labels of the thumbnail (LABEL_RGBA).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tiling.errors import StoreError
from tiling.store.names import FORMAT_VERSIONS, MAPS, stage_path
from tiling.store.ome import (
    LABELS,
    Display,
    Level,
    declare_labels,
    read_levels,
    write_collection,
    write_image,
)
from tiling.store.stamps import VERSION_KEY, check_version, check_whole, seal
from tiling.threads import stage_threads

FORMAT_VERSION = FORMAT_VERSIONS[MAPS]
ATTENTION, ATTENTION_RANK, TISSUE, LESION, ARTEFACTS, THUMBNAIL = (
    "attention", "attention_rank", "tissue", "lesion", "artefacts", "thumbnail")
COLOUR_MAP = "viridis"  # matplotlib name: perceptually uniform, colour-blind safe; the reports use it too
LABEL_RGBA = {TISSUE: (160, 160, 160, 255), LESION: (0, 255, 90, 255), ARTEFACTS: (255, 0, 255, 255)}


def display(values: np.ndarray) -> Display | None:
    """A heatmap's display: window = 1st..99th percentile of its finite values (None if none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    start, end, low, high = (float(v) for v in np.percentile(finite, [1, 99, 0, 100]))
    return Display(start, end, low, high, COLOUR_MAP)


class MapsWriter:
    """Writes a maps.zarr at `path` (a temporary name from atomic_path), used as a context: one
    image per `image` call (the masks of LABEL_RGBA kept for the labels), then labels,
    collection and attrs with `finish`. Images are written on `tiling.threads.stage_threads`
    threads while the caller computes the next; leaving the context waits for them."""

    def __init__(self, path: Path, pixel_um: float, chunk: int) -> None:
        self.path = Path(path)
        self.root = zarr.open_group(path, mode="w", zarr_format=3)
        self.pixel_um, self.chunk = pixel_um, chunk
        self.images: dict[str, Future[zarr.Group]] = {}
        self.masks: dict[str, tuple[np.ndarray, str]] = {}
        self.pool = ThreadPoolExecutor(stage_threads())

    def __enter__(self) -> MapsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def image(self, name: str, data: np.ndarray | Callable[[], np.ndarray], description: str) -> None:
        """Write `data` ((H, W) or (3, H, W), or a function that makes it on the writer's threads)
        as the image `name`; a mask (of LABEL_RGBA) is kept, an array, for the labels."""
        if name in LABEL_RGBA:
            self.masks[name] = (data() if callable(data) else data, description)
            return
        self.images[name] = self.pool.submit(self._image, str(len(self.images)), name, data, description)

    def _image(self, group: str, name: str, data: np.ndarray | Callable[[], np.ndarray],
               description: str) -> zarr.Group:
        data = data() if callable(data) else data
        shown = display(data) if np.issubdtype(data.dtype, np.floating) else None
        return write_image(self.root, group, data, self.pixel_um, description, self.chunk, display=shown, title=name)

    def _label(self, labels: zarr.Group, name: str, data: np.ndarray, description: str) -> zarr.Group:
        values = np.flatnonzero(np.bincount(np.asarray(data).ravel()))
        colours = {int(v): LABEL_RGBA[name] for v in values if v}
        return write_image(labels, name, data, self.pixel_um, description, self.chunk,
                           method="nearest", label_colours=colours)

    def finish(self, attrs: dict[str, Any]) -> None:
        """Write the masks as labels of the thumbnail (an image written before), list the images
        as a collection; write the attrs, the record of the files (`seal`) and the format version."""
        images = {name: image.result() for name, image in self.images.items()}
        groups = dict(images)
        if self.masks:
            thumbnail = images[THUMBNAIL]
            labels = thumbnail.require_group(LABELS)
            written = {name: self.pool.submit(self._label, labels, name, *mask) for name, mask in self.masks.items()}
            groups.update({name: label.result() for name, label in written.items()})
            declare_labels(thumbnail, list(self.masks))
        write_collection(self.root, self.path, list(images.values()))
        self.root.attrs.update({**attrs, "images": {n: g.path for n, g in groups.items()},
                                **seal(self.path), VERSION_KEY: FORMAT_VERSION})


@dataclass
class Maps:
    """A slide's maps.zarr opened read-only; ``maps[name]`` reads one (H, W) map as numpy, once:
    a level read (read-only) and each image's pyramid are kept for the next caller."""

    path: Path
    group: zarr.Group
    attrs: dict[str, Any]
    _read: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    _pyramids: dict[str, list[Level]] = field(default_factory=dict, repr=False)

    @property
    def downsample(self) -> float:
        return float(self.attrs["downsample"])

    @property
    def pixel_um(self) -> float:
        """Map pixel side in micrometres (D × level-0 mpp)."""
        return float(self.attrs["pixel_um"])

    @property
    def methods(self) -> list[str]:
        """CAM methods (explain.zarr order)."""
        return list(self.attrs["methods"])

    @property
    def heatmaps(self) -> list[str]:
        """Every float map: attention, attention_rank, then the CAM methods."""
        return list(self.attrs["heatmaps"])

    def __getitem__(self, name: str) -> np.ndarray:
        """The full-resolution (H, W) (or (3, H, W)) image `name`."""
        return self.level(name, 0)

    def __contains__(self, name: object) -> bool:
        """Whether image `name` is stored (e.g. the artefacts mask, written when found)."""
        return name in self.attrs["images"]

    def _path(self, name: str) -> str:
        images = self.attrs["images"]
        if name not in images:
            raise KeyError(f"{self.path}: no map {name!r}; stored: {', '.join(images)}")
        return str(images[name])

    def level(self, name: str, k: int) -> np.ndarray:
        """Pyramid level k of image `name`: ceil(H / 2^k) x ceil(W / 2^k) px of
        pixel_um · 2^k µm (0 = full resolution; IndexError past the last)."""
        levels = self.pyramid(name)
        if not 0 <= k < len(levels):
            raise IndexError(f"{self.path}: {name} level {k} asked, levels 0..{len(levels) - 1} stored")
        if (name, k) not in self._read:
            self._read[name, k] = levels[k].array[...]
            self._read[name, k].flags.writeable = False
        return self._read[name, k]

    def levels(self, name: str) -> int:
        """How many pyramid levels image `name` has."""
        return len(self.pyramid(name))

    def pyramid(self, name: str) -> list[Level]:
        """Every level of image `name` (lazy), finest first, with its level-0 px per map px."""
        if name not in self._pyramids:
            self._pyramids[name] = read_levels(self.group, self._path(name), self.downsample)
        return self._pyramids[name]

    @property
    def tissue(self) -> np.ndarray:
        return self[TISSUE].view(bool)

    @functools.cached_property
    def tissue_box(self) -> tuple[slice, slice]:
        """The rows and columns of the tissue's bounding box (every finite map value lies on
        tissue: a patch covers it), empty without tissue: what the audit needs to look at."""
        rows, cols = (np.flatnonzero(self.tissue.any(axis=axis)) for axis in (1, 0))
        if rows.size == 0:
            return slice(0, 0), slice(0, 0)
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)

    @property
    def lesion(self) -> np.ndarray:
        """(H, W) uint16 lesion labels: 0 background, k the k-th lesion."""
        return self[LESION]

    @property
    def artefacts(self) -> np.ndarray:
        """(H, W) uint8 artefact labels: 0 none, else a kind of attrs["artefact_kinds"]."""
        return self[ARTEFACTS]

    @property
    def thumbnail(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return np.moveaxis(self[THUMBNAIL], 0, -1)


def open_maps(path: Path) -> Maps:
    """Open ``<slide_dir>/maps.zarr`` (or the .zarr path itself) read-only, its format version
    and its files checked (`check_whole`)."""
    path = stage_path(path, MAPS)
    try:
        group = zarr.open_group(path, mode="r")
        complete = "heatmaps" in group.attrs
    except (FileNotFoundError, json.JSONDecodeError, zarr.errors.GroupNotFoundError):
        complete = False
    if not complete:
        raise StoreError(f"{path}: no complete maps store here; run the stitch stage on the "
                         "slide first")
    check_version(path, group.attrs, FORMAT_VERSION, "rerun the stitch stage on the slide")
    check_whole(path, group.attrs, "rerun the stitch stage (or `run`) on the slide")
    return Maps(path, group, dict(group.attrs))
