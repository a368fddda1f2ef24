"""OME-Zarr (NGFF 0.5, on zarr v3) image groups, so napari and vizarr open our maps.

An image is a zarr group whose attributes hold ``{"ome": {"version": "0.5", "multiscales":
[...]}}`` and whose arrays are the resolution levels ("0" here: one level). Axes are ordered
channel before space; every array's ``dimension_names`` match the axis names; each level carries
exactly one ``scale`` transformation giving the pixel size in micrometres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

NGFF_VERSION = "0.5"
LEVEL = "0"
RGB_COLOURS = ("FF0000", "00FF00", "0000FF")


def _axes(ndim: int) -> list[dict[str, str]]:
    space = [{"name": "y", "type": "space", "unit": "micrometer"},
             {"name": "x", "type": "space", "unit": "micrometer"}]
    return ([{"name": "c", "type": "channel"}] if ndim == 3 else []) + space


def image_metadata(name: str, ndim: int, pixel_um: float, description: str) -> dict[str, Any]:
    """The ``ome`` attribute of a single-level image: (y, x) or (c, y, x), `pixel_um` µm/px."""
    scale = ([1.0] if ndim == 3 else []) + [float(pixel_um)] * 2
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": _axes(ndim),
            "datasets": [{"path": LEVEL,
                          "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            "type": "mean",
            "metadata": {"description": description},
        }],
    }
    if ndim == 3:
        ome["omero"] = {"channels": [
            {"label": label, "color": colour, "active": True, "coefficient": 1,
             "family": "linear", "inverted": False,
             "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
            for label, colour in zip("RGB", RGB_COLOURS, strict=True)],
            "rdefs": {"model": "color"}}
    return ome


def write_image(parent: zarr.Group, name: str, data: np.ndarray, pixel_um: float,
                description: str, chunk: int = 1024) -> zarr.Array:
    """Write `data` ((y, x) or (c, y, x)) as the OME-Zarr image group ``parent/name``."""
    group = parent.create_group(name, attributes={
        "ome": image_metadata(name, data.ndim, pixel_um, description)})
    chunks = data.shape[:-2] + tuple(min(chunk, n) for n in data.shape[-2:])
    fill = float("nan") if np.issubdtype(data.dtype, np.floating) else 0
    return group.create_array(LEVEL, data=data, chunks=chunks, fill_value=fill,
                              dimension_names=[a["name"] for a in _axes(data.ndim)])


def write_collection(root: zarr.Group, images: list[str]) -> None:
    """Declare `root` a collection of the image groups `images` (NGFF 0.5 "bioformats2raw.layout"):
    the root carries ``"bioformats2raw.layout": 3`` and its ``OME`` group lists them as "series"."""
    root.attrs["ome"] = {"version": NGFF_VERSION, "bioformats2raw.layout": 3}
    root.create_group("OME", attributes={"ome": {"version": NGFF_VERSION, "series": list(images)}})


def read_image(parent: zarr.Group, name: str) -> zarr.Array:
    """The full-resolution level of the image group ``parent/name`` (lazy zarr array)."""
    datasets = parent[name].attrs["ome"]["multiscales"][0]["datasets"]
    return parent[name][datasets[0]["path"]]


@dataclass(frozen=True)
class Level:
    """One resolution level of an image: its (lazy) array and level-0 slide px per array px."""

    array: zarr.Array
    downsample: float


def read_levels(parent: zarr.Group, name: str, downsample: float) -> list[Level]:
    """Every resolution level of the image group ``parent/name``, finest first; `downsample` is
    the first level's, the others' follow from the ratio of their x ``scale`` transformations."""
    datasets = parent[name].attrs["ome"]["multiscales"][0]["datasets"]
    scales = [d["coordinateTransformations"][0]["scale"][-1] for d in datasets]
    return [Level(parent[name][d["path"]], downsample * s / scales[0]) for d, s in zip(datasets, scales, strict=True)]
