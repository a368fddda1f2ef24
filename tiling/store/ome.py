"""OME-Zarr (NGFF 0.5, on zarr v3) images with resolution pyramids, display settings and labels,
so `ome_zarr info`, napari and vizarr open our maps.

An image is a zarr group whose attributes hold ``{"ome": {"version": "0.5", "multiscales":
[...]}}`` and whose arrays "0", "1", ... are its levels: level k+1 halves level k in y and x
(ceil) until the longer side is <= PYRAMID_SIDE. Axes are ordered channel before space; every
array's ``dimension_names`` match the axis names. Level k carries a ``scale`` of
pixel_um · 2^k µm; a "mean" pyramid (2 x 2 block means, NaN ignored) adds a ``translation`` of
(2^k - 1)/2 · pixel_um µm, the centre of its first block; a "nearest" pyramid (labels: every
second pixel) needs none. Display settings go in ``omero`` (one channel: window start/end in the
map's units, colour, LUT name); masks are ``labels`` of an image (``image-label`` with colours).

Several images form a collection (NGFF "bioformats2raw.layout" 3, `write_collection`): the images
are the root's groups "0", "1", ... (the layout's default, which ome-zarr-py's `find_multiscales`
and Bio-Formats assume), listed as "series" in the ``OME`` group and described, each with its
name and pixel size, in ``OME/METADATA.ome.xml`` (which napari-ome-zarr reads to find them).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import zarr

NGFF_VERSION = "0.5"
PYRAMID_SIDE = 256
RGB_COLOURS = ("FF0000", "00FF00", "0000FF")
# float maps: byte shuffle then zstd keeps every value and stores fewer bytes than zarr's default
# (zstd alone) on stitched CAMs; level 1 stores 5 % more than level 2 and 9 % more than level 5,
# and writes a 12 Mpx Grad-CAM map in 0.08 s against 0.19 s at level 2 (bench/audit_40x.py's
# maps); integer images keep the default
FLOAT_CODEC = zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", blocksize=1 << 20)
LABELS, OME, OME_METADATA = "labels", "OME", "METADATA.ome.xml"


@dataclass(frozen=True)
class Display:
    """How a viewer shows a one-channel map: values in [start, end] spread over colour map `lut`
    (a matplotlib name), the map's finite range [low, high]."""

    start: float
    end: float
    low: float
    high: float
    lut: str


def _axes(ndim: int) -> list[dict[str, str]]:
    space = [{"name": "y", "type": "space", "unit": "micrometer"},
             {"name": "x", "type": "space", "unit": "micrometer"}]
    return ([{"name": "c", "type": "channel"}] if ndim == 3 else []) + space


def halve(data: np.ndarray, method: str) -> np.ndarray:
    """The next pyramid level of (..., y, x) `data`: ceil(y/2) x ceil(x/2) px. "nearest" keeps
    every second pixel; "mean" averages 2 x 2 blocks ignoring NaN (an odd edge pads with NaN):
    Σ finite values / #finite values, in float32; integers (no NaN) are rounded back to their
    dtype (half to even, as np.rint), in integer arithmetic (`_halve_integers`)."""
    if method == "nearest":
        return data[..., ::2, ::2]
    if np.issubdtype(data.dtype, np.integer):
        return _halve_integers(data)
    height, width = data.shape[-2:]
    values = np.full((*data.shape[:-2], height + height % 2, width + width % 2), np.nan, np.float32)
    values[..., :height, :width] = data
    finite = ~np.isnan(values)
    values[~finite] = 0
    rows = values[..., 0::2] + values[..., 1::2]  # each row's pair first: np.nanmean's order, bit for bit
    total = rows[..., 0::2, :] + rows[..., 1::2, :]
    pairs = finite[..., 0::2].view(np.uint8) + finite[..., 1::2].view(np.uint8)
    count = pairs[..., 0::2, :] + pairs[..., 1::2, :]
    with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN blocks stay NaN
        mean = total / count
    return mean.astype(data.dtype)


def _halve_integers(data: np.ndarray) -> np.ndarray:
    """`halve`'s mean of integer `data`: an odd edge is padded with a copy of itself, which gives
    the mean of the pixels there (a + a + b + b = 2(a + b)); the sum s of each 2 x 2 block,
    then s / 4 rounded half to even: q = s >> 2, plus 1 when s & 3 is 3, or 2 with q odd."""
    height, width = data.shape[-2:]
    padded = np.pad(data, [(0, 0)] * (data.ndim - 2) + [(0, height % 2), (0, width % 2)], mode="edge")
    rows = padded[..., 0::2].astype(np.uint16 if data.dtype == np.uint8 else np.int64) + padded[..., 1::2]
    total = rows[..., 0::2, :] + rows[..., 1::2, :]
    quarter, rest = total >> 2, total & 3
    return (quarter + ((rest == 3) | ((rest == 2) & (quarter & 1 == 1)))).astype(data.dtype)


def pyramid(data: np.ndarray, method: str) -> list[np.ndarray]:
    """`data` and its halvings (`halve`) until the longer side is <= PYRAMID_SIDE."""
    levels = [data]
    while max(levels[-1].shape[-2:]) > PYRAMID_SIDE:
        levels.append(halve(levels[-1], method))
    return levels


def _transformations(k: int, ndim: int, pixel_um: float, method: str) -> list[dict[str, Any]]:
    channel = [1.0] if ndim == 3 else []
    step = float(pixel_um) * 2 ** k
    out: list[dict[str, Any]] = [{"type": "scale", "scale": channel + [step] * 2}]
    if method == "mean" and k:
        shift = (2 ** k - 1) / 2 * float(pixel_um)
        out.append({"type": "translation", "translation": [0.0] * len(channel) + [shift] * 2})
    return out


def _omero(ndim: int, name: str, display: Display | None) -> dict[str, Any] | None:
    channel = {"active": True, "coefficient": 1, "family": "linear", "inverted": False}
    if ndim == 3:
        return {"channels": [{**channel, "label": label, "color": colour,
                              "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                             for label, colour in zip("RGB", RGB_COLOURS, strict=True)],
                "rdefs": {"model": "color"}}
    if display is None:
        return None
    return {"channels": [{**channel, "label": name, "color": "FFFFFF", "lut": display.lut,
                          "window": {"start": display.start, "end": display.end,
                                     "min": display.low, "max": display.high}}],
            "rdefs": {"model": "greyscale"}}


def write_image(parent: zarr.Group, name: str, data: np.ndarray, pixel_um: float,
                description: str, chunk: int = 1024, method: str = "mean",
                display: Display | None = None, label_colours: Mapping[int, Sequence[int]] | None = None,
                title: str | None = None) -> zarr.Group:
    """Write `data` ((y, x) or (c, y, x)) as the OME-Zarr image group ``parent/name`` (named
    `title` in its metadata, `name` by default) with its pyramid (`method` "mean" or "nearest"),
    `display` settings (omero) and, for a label image, the RGBA colour of each value
    (``image-label``; its source image is the grandparent)."""
    title = title or name
    levels = pyramid(data, method)
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [{
        "name": title, "axes": _axes(data.ndim), "type": method,
        "datasets": [{"path": str(k), "coordinateTransformations":
                      _transformations(k, data.ndim, pixel_um, method)} for k in range(len(levels))],
        "metadata": {"description": description}}]}
    omero = _omero(data.ndim, title, display)
    if omero:
        ome["omero"] = omero
    if label_colours is not None:
        ome["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"},
                              "colors": [{"label-value": int(v), "rgba": list(rgba)}
                                         for v, rgba in sorted(label_colours.items())]}
    group = parent.create_group(name, attributes={"ome": ome})
    floating = np.issubdtype(data.dtype, np.floating)
    for k, level in enumerate(levels):
        chunks = level.shape[:-2] + tuple(min(chunk, n) for n in level.shape[-2:])
        group.create_array(str(k), data=np.ascontiguousarray(level), chunks=chunks,
                           fill_value=float("nan") if floating else 0,
                           compressors=FLOAT_CODEC if floating else "auto",
                           dimension_names=[a["name"] for a in _axes(data.ndim)])
    return group


def declare_labels(image: zarr.Group, names: list[str]) -> None:
    """List the label images under ``image/labels`` (NGFF "labels" group)."""
    image.require_group(LABELS).attrs["ome"] = {"version": NGFF_VERSION, "labels": list(names)}


OME_XML_TYPES = {"float32": "float", "uint8": "uint8", "uint16": "uint16"}
OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def ome_xml(images: list[zarr.Group]) -> str:
    """The OME-XML of a collection (``OME/METADATA.ome.xml``, "MetadataOnly"): one Image per
    group, ``ID="Image:<its path>"`` (how napari-ome-zarr finds the group), named after its
    multiscales, with its level-0 size, pixel type, channels and pixel size in µm."""
    root = ElementTree.Element("OME", {"xmlns": OME_NAMESPACE, "Creator": "slideaudit"})
    for k, group in enumerate(images):
        multiscale = group.attrs["ome"]["multiscales"][0]
        level = group[multiscale["datasets"][0]["path"]]
        size_um = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
        channels = level.shape[0] if level.ndim == 3 else 1
        image = ElementTree.SubElement(root, "Image", {"ID": f"Image:{group.basename}",
                                                       "Name": multiscale["name"]})
        pixels = ElementTree.SubElement(image, "Pixels", {
            "ID": f"Pixels:{k}", "DimensionOrder": "XYCZT", "Type": OME_XML_TYPES[str(level.dtype)],
            "SizeX": str(level.shape[-1]), "SizeY": str(level.shape[-2]), "SizeC": str(channels),
            "SizeZ": "1", "SizeT": "1", "PhysicalSizeX": repr(size_um), "PhysicalSizeY": repr(size_um),
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
        for c in range(channels):
            ElementTree.SubElement(pixels, "Channel", {"ID": f"Channel:{k}:{c}", "SamplesPerPixel": "1"})
        ElementTree.SubElement(pixels, "MetadataOnly")
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def write_collection(root: zarr.Group, path: Path, images: list[zarr.Group]) -> None:
    """Declare the zarr group `root` (at `path`) a collection of the image groups `images`
    (NGFF 0.5 "bioformats2raw.layout" 3): the root carries the layout, its ``OME`` group lists
    their paths as "series" and describes them in ``OME/METADATA.ome.xml`` (`ome_xml`)."""
    root.attrs["ome"] = {"version": NGFF_VERSION, "bioformats2raw.layout": 3}
    root.create_group(OME, attributes={"ome": {"version": NGFF_VERSION,
                                               "series": [g.path for g in images]}})
    (Path(path) / OME / OME_METADATA).write_text(ome_xml(images), encoding="utf-8")


@dataclass(frozen=True)
class Level:
    """One resolution level of an image: its (lazy) array and level-0 slide px per array px."""

    array: zarr.Array
    downsample: float


def read_levels(parent: zarr.Group, name: str, downsample: float) -> list[Level]:
    """Every resolution level of the image group ``parent/name``, finest first; `downsample` is
    the first level's, the others' follow from the ratio of their x ``scale`` transformations."""
    image = parent[name]
    datasets = image.attrs["ome"]["multiscales"][0]["datasets"]
    scales = [d["coordinateTransformations"][0]["scale"][-1] for d in datasets]
    return [Level(image[d["path"]], downsample * s / scales[0]) for d, s in zip(datasets, scales, strict=True)]
