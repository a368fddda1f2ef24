"""maps.zarr as OME-Zarr 0.5: resolution pyramids, display windows, labels, and what other tools
(`ome_zarr info`, ome-zarr-py's collection listing and Reader, a reader following the spec) find in it."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from fake_stores import make_slide_case
from tiling.config import StitchConfig
from tiling.stitch import stitch_slide
from tiling.store.maps import open_maps
from tiling.store.ome import halve, pyramid


def test_mean_halving_ignores_nan_and_pads_odd_edges() -> None:
    a = np.array([[1, 3, 5], [np.nan, 2, np.nan], [4, 4, 8]], np.float32)
    np.testing.assert_array_equal(halve(a, "mean"), [[2.0, 5.0], [4.0, 8.0]])
    assert np.isnan(halve(np.full((2, 2), np.nan, np.float32), "mean")).all()
    rgb = np.array([[[0, 255], [1, 1]]], np.uint8)  # (c, y, x) = (1, 2, 2): mean 64.25
    assert halve(rgb, "mean").tolist() == [[[64]]]


def test_mean_halving_equals_nanmean_of_the_blocks_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 3, (3, 101, 64)).astype(np.float32)   # odd rows, values of all sizes
    values[rng.random(values.shape) < 0.3] = np.nan
    padded = np.pad(values, [(0, 0), (0, 1), (0, 0)], constant_values=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        expected = np.nanmean(padded.reshape(3, 51, 2, 32, 2), axis=(-3, -1))
    np.testing.assert_array_equal(halve(values, "mean"), expected)   # NaN where expected is NaN
    assert halve(values, "mean").dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("shape", [(3, 64, 48), (3, 65, 47), (1, 1, 1)])
def test_integer_images_halve_to_their_rounded_block_means(dtype: type, shape: tuple[int, ...]) -> None:
    """Integer halving equals np.rint (half to even) of the blocks' mean in float64, odd edges
    averaging the pixels they have."""
    info = np.iinfo(dtype)
    values = np.random.default_rng(1).integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values.flat[:4] = info.max  # the largest sums
    height, width = shape[-2:]
    padded = np.pad(values.astype(np.float64), [(0, 0), (0, height % 2), (0, width % 2)], constant_values=np.nan)
    blocks = padded.reshape(shape[0], (height + 1) // 2, 2, (width + 1) // 2, 2)
    expected = np.rint(np.nanmean(blocks, axis=(-3, -1))).astype(dtype)
    halved = halve(values, "mean")
    assert halved.dtype == dtype
    np.testing.assert_array_equal(halved, expected)


def test_labels_halve_by_nearest_keeping_their_values() -> None:
    labels = np.array([[0, 7, 0], [7, 7, 7], [0, 0, 3]], np.uint16)
    np.testing.assert_array_equal(halve(labels, "nearest"), [[0, 0], [0, 3]])
    levels = pyramid(np.zeros((1000, 300), np.uint8), "nearest")
    assert [lv.shape for lv in levels] == [(1000, 300), (500, 150), (250, 75)]


def spec_images(root: Path) -> list[str]:
    """Every image of an OME-Zarr 0.5 collection, read as the spec says (not with our code): the
    root's "bioformats2raw.layout" 3, the series its OME group lists, and each one's labels."""
    def attrs(path: Path) -> dict:
        return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]

    assert attrs(root)["bioformats2raw.layout"] == 3
    found = []
    for series in attrs(root / "OME")["series"]:
        assert attrs(root / series)["multiscales"]
        found.append(series)
        if (root / series / "labels").is_dir():
            for label in attrs(root / series / "labels")["labels"]:
                colours = attrs(root / series / "labels" / label)["image-label"]["colors"]
                assert all(len(c["rgba"]) == 4 and c["label-value"] > 0 for c in colours)  # [] on an empty label
                found.append(f"{series}/labels/{label}")
    return found


@pytest.fixture(scope="module")
def maps_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    slide_dir, annotations = make_slide_case(tmp_path_factory.mktemp("ome"), "cmu")
    return stitch_slide(slide_dir, annotations, StitchConfig(max_side=1024, patch_px=256))  # max_side decides


def test_maps_have_pyramids_windows_and_labels(maps_path: Path) -> None:
    maps = open_maps(maps_path)
    names = [*maps.heatmaps, "thumbnail", "tissue", "lesion", "artefacts"]
    assert spec_images(maps_path) == [maps.attrs["images"][name] for name in names]
    assert maps.attrs["images"]["lesion"] == f"{maps.attrs['images']['thumbnail']}/labels/lesion"
    full = maps["attention"]
    assert full.shape == (989, 740) and maps.levels("attention") == 3
    level1 = maps.level("attention", 1)
    assert level1.shape == (495, 370)
    blocks = full[:988].reshape(494, 2, 370, 2)
    r, c = np.argwhere(np.isfinite(blocks).all(axis=(1, 3)))[0]
    np.testing.assert_allclose(level1[r, c], blocks[r, :, c].mean(), rtol=1e-6)
    assert np.isnan(level1[:494][~np.isfinite(blocks).any(axis=(1, 3))]).all()
    assert maps.level("lesion", 2).shape == (248, 185) and maps.level("lesion", 2).max() == 1
    with pytest.raises(IndexError, match=r"levels 0\.\.2"):
        maps.level("attention", 3)
    assert "lesion" in maps and "artefacts" in maps and "nothing" not in maps
    with pytest.raises(KeyError, match="no map 'nothing'"):
        maps["nothing"]
    ome = maps.group[maps.attrs["images"]["attention"]].attrs["ome"]
    assert ome["multiscales"][0]["name"] == "attention"
    (transform, shift) = ome["multiscales"][0]["datasets"][2]["coordinateTransformations"]
    assert transform["scale"] == [pytest.approx(4 * maps.pixel_um)] * 2
    assert shift["translation"] == [pytest.approx(1.5 * maps.pixel_um)] * 2  # (2² - 1)/2 px
    (channel,) = ome["omero"]["channels"]
    finite = full[np.isfinite(full)]
    assert channel["lut"] == "viridis" and channel["window"]["min"] == pytest.approx(finite.min())
    assert channel["window"]["start"] == pytest.approx(np.percentile(finite, 1))
    assert channel["window"]["end"] == pytest.approx(np.percentile(finite, 99))
    lesion = maps.group[maps.attrs["images"]["lesion"]].attrs["ome"]
    assert lesion["image-label"]["colors"] == [{"label-value": 1, "rgba": [0, 255, 90, 255]}]
    assert [t["type"] for t in lesion["multiscales"][0]["datasets"][1]["coordinateTransformations"]] == ["scale"]


INFO_END = "-- end of ome_zarr info --"


def ome_zarr_info(paths: list[Path]) -> list[str]:
    """What `ome_zarr info PATH` (ome-zarr-py, a dev extra) prints for each path, from one
    process that calls the tool's entry point once per path (one launch, not one per path)."""
    script = ("import sys\nfrom ome_zarr.cli import main\nfor path in sys.argv[1:]:\n"
              f"    main(['info', path])\n    print({INFO_END!r}, flush=True)\n")
    shown = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True,
                           text=True, check=True).stdout
    return shown.split(INFO_END + "\n")[:-1]


def test_ome_zarr_info_reads_every_image_and_its_levels(maps_path: Path) -> None:
    images = spec_images(maps_path)
    maps = open_maps(maps_path)
    names = {path: name for name, path in maps.attrs["images"].items()}
    *shown_images, labels = ome_zarr_info([*(maps_path / image for image in images),
                                           maps_path / maps.attrs["images"]["thumbnail"]])
    assert len(shown_images) == len(images)
    for image, shown in zip(images, shown_images, strict=True):
        assert f"{maps_path / image} [zgroup]" in shown and "Multiscales" in shown, shown
        assert shown.count("   - (") >= maps.levels(names[image]), shown  # one shape line per level
    assert "labels/lesion [zgroup]" in labels and "labels/tissue [zgroup]" in labels, labels


def test_ome_zarr_py_finds_every_image_and_label_from_the_root(maps_path: Path) -> None:
    """ome-zarr-py lists the collection from the root (OME/METADATA.ome.xml: `find_multiscales`,
    what `ome_zarr view` uses); its Reader opens each image and, under the thumbnail, every label,
    each level 0 at the maps' pixel size in µm. Its Reader alone does not follow a collection
    (ome-zarr-py issue 421): from the root it yields nothing, as for bioformats2raw's output."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr.utils import find_multiscales

    maps = open_maps(maps_path)
    listed = find_multiscales(maps_path)
    assert [name for _, name, _ in listed] == [*maps.heatmaps, "thumbnail"]
    found = {}
    for path, name, _ in listed:
        assert Path(path) == maps_path / maps.attrs["images"][name]
        for node in Reader(parse_url(str(path)))():
            if not node.data:  # the "labels" group
                continue
            label = node.load(Label) is not None
            key = node.metadata["name"] if label else name
            found[key] = label
            scale = node.metadata["coordinateTransformations"][0][0]["scale"]
            assert scale[-2:] == [pytest.approx(maps.pixel_um)] * 2
            assert [a.get("unit") for a in node.metadata["axes"]][-2:] == ["micrometer"] * 2
            assert node.data[0].shape[-2:] == maps[key].shape[-2:]
            np.testing.assert_array_equal(np.asarray(node.data[-1]), maps.level(key, len(node.data) - 1))
    assert found == {**dict.fromkeys([*maps.heatmaps, "thumbnail"], False),
                     "tissue": True, "lesion": True, "artefacts": True}
    assert list(Reader(parse_url(str(maps_path)))()) == []


def test_ome_xml_describes_every_image(maps_path: Path) -> None:
    """OME/METADATA.ome.xml names each series' group in its Image ID (napari-ome-zarr's lookup),
    with the image's name, size, pixel type and physical pixel size."""
    from xml.etree import ElementTree

    maps = open_maps(maps_path)
    root = ElementTree.parse(maps_path / "OME" / "METADATA.ome.xml").getroot()
    ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
    images = root.findall("ome:Image", ns)
    assert [i.get("Name") for i in images] == [*maps.heatmaps, "thumbnail"]
    for image in images:
        name, pixels = image.get("Name"), image.find("ome:Pixels", ns)
        assert image.get("ID") == f"Image:{maps.attrs['images'][name]}"
        data = maps[name]
        assert (int(pixels.get("SizeY")), int(pixels.get("SizeX"))) == data.shape[-2:]
        assert int(pixels.get("SizeC")) == len(pixels.findall("ome:Channel", ns)) == (3 if data.ndim == 3 else 1)
        assert pixels.get("Type") == ("uint8" if name == "thumbnail" else "float")
        assert float(pixels.get("PhysicalSizeX")) == pytest.approx(maps.pixel_um)
        assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.find("ome:MetadataOnly", ns) is not None
