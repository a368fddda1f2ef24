"""maps.zarr: a slide's stitched maps, written by the stitch stage (zarr v3, OME-Zarr 0.5).

One single-level OME-Zarr image group per map (tiling.store.ome), all on one (H, W) grid of
D level-0 px per map px (pixel_um = D × level-0 mpp):

    attention        (H, W) float32 A-MIL attention, NaN off tissue
    attention_rank   (H, W) float32 its percentile rank among patches, 0..1
    <method>         (H, W) float32 raw values of each CAM method of explain.zarr
    tissue           (H, W) uint8, 1 where a patch covers the pixel
    lesion           (H, W) uint16, k on the k-th annotated lesion, 0 elsewhere
    artefacts        (H, W) uint8 artefact labels (patches.zarr's, nearest neighbour; 0 none)
    thumbnail        (3, H, W) uint8 RGB of the slide
    OME              the NGFF collection listing every image, so a viewer finds them all
    attrs            slide_id, dimensions (level-0 W, H), downsample (D), pixel_um, shape (H, W),
                     methods, heatmaps (attention, attention_rank, methods), lesion_names,
                     artefact_kinds ({label: name}),
                     the stamp (config_hash, source_sha256), format_version (FORMAT_VERSION)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tiling.errors import StoreError
from tiling.store import MAPS, VERSION_KEY, check_version, stage_path
from tiling.store.ome import read_image, write_collection, write_image

FORMAT_VERSION = 2
ATTENTION, ATTENTION_RANK, TISSUE, LESION, ARTEFACTS, THUMBNAIL = (
    "attention", "attention_rank", "tissue", "lesion", "artefacts", "thumbnail")


class MapsWriter:
    """Writes a maps.zarr at `path` (a temporary name from atomic_path): one image per `image`
    call, then the collection and attrs with `finish`."""

    def __init__(self, path: Path, pixel_um: float, chunk: int) -> None:
        self.root = zarr.open_group(path, mode="w", zarr_format=3)
        self.pixel_um, self.chunk = pixel_um, chunk
        self.names: list[str] = []

    def image(self, name: str, data: np.ndarray, description: str) -> None:
        """Write `data` ((H, W) or (3, H, W)) as the image `name`."""
        write_image(self.root, name, data, self.pixel_um, description, self.chunk)
        self.names.append(name)

    def finish(self, attrs: dict[str, Any]) -> None:
        """List the images as a collection; write the attrs and the format version."""
        write_collection(self.root, self.names)
        self.root.attrs.update({**attrs, VERSION_KEY: FORMAT_VERSION})


@dataclass
class Maps:
    """A slide's maps.zarr opened read-only; ``maps[name]`` reads one (H, W) map as numpy."""

    path: Path
    group: zarr.Group
    attrs: dict[str, Any]

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
        return read_image(self.group, name)[...]

    @property
    def tissue(self) -> np.ndarray:
        return self[TISSUE].astype(bool)

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
    """Open ``<slide_dir>/maps.zarr`` (or the .zarr path itself) read-only."""
    path = stage_path(path, MAPS)
    try:
        group = zarr.open_group(path, mode="r")
        complete = "heatmaps" in group.attrs
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        complete = False
    if not complete:
        raise StoreError(f"{path}: no complete maps store here; run the stitch stage on the "
                         "slide first")
    check_version(path, group.attrs, FORMAT_VERSION, "rerun the stitch stage on the slide")
    return Maps(path, group, dict(group.attrs))
