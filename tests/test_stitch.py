"""Stitching patch values back to slide maps, and the OME-Zarr maps store."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from fake_stores import make_slide_case
from tiling.config import StitchConfig
from tiling.errors import StoreError
from tiling.stitch import PatchGrid, map_downsample, map_shape, spans, stitch_slide
from tiling.store import EXPLAIN, MAPS, PATCHES, is_current, open_patch_store, read_stamp
from tiling.store.explain import open_explain_store
from tiling.store.maps import open_maps


def stitched(coords: list[list[int]], values: np.ndarray, footprint: float, downsample: float,
             shape: tuple[int, int]) -> np.ndarray:
    grid = PatchGrid(np.array(coords, np.int64), footprint, downsample, shape)
    return grid.stitch(values, grid.coverage())


def test_patch_value_lands_on_exactly_its_pixels() -> None:
    # patch x in [2, 10), y in [0, 8) at D = 2: pixel centres (c + .5)·2 inside -> cols 1..4,
    # rows 0..3
    m = stitched([[2, 0]], np.full((1, 1, 1), 3.0), 8, 2, (6, 8))
    expected = np.full((6, 8), np.nan, np.float32)
    expected[0:4, 1:5] = 3.0
    np.testing.assert_array_equal(m, expected)


def test_pixel_centre_rule_with_fractional_downsample() -> None:
    # D = 2.5: centres 1.25, 3.75, 6.25, 8.75, 11.25; a patch [3, 9) holds the 2nd to 4th
    lo, hi = spans(np.array([3]), 6, 2.5, 100)
    assert (lo[0], hi[0]) == (1, 4)
    lo, hi = spans(np.array([90]), 20, 2.5, 40)  # clipped at the map edge
    assert (lo[0], hi[0]) == (36, 40)


def test_overlapping_patches_are_averaged() -> None:
    m = stitched([[0, 0], [4, 0]], np.array([1.0, 3.0]).reshape(2, 1, 1), 8, 1, (8, 14))
    np.testing.assert_array_equal(m[:, 0:4], 1.0)
    np.testing.assert_array_equal(m[:, 4:8], 2.0)  # (1 + 3) / 2
    np.testing.assert_array_equal(m[:, 8:12], 3.0)
    assert np.isnan(m[:, 12:]).all()


def test_cam_is_resampled_bilinearly_onto_the_footprint() -> None:
    # a 2 x 2 CAM [[0, 1], [2, 3]] on a 4 px footprint: pixel r sits at u = (r + .5)/2 - .5
    # cells (clamped to [0, 1]), so value = 2·u_row + u_col
    cam = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    m = stitched([[0, 0]], cam, 4, 1, (4, 4))
    u = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    np.testing.assert_allclose(m, 2 * u[:, None] + u[None, :], rtol=1e-6)


def test_downsample_and_shape() -> None:
    assert map_downsample((10000, 3000), StitchConfig(max_side=4096)) == 3.0
    assert map_downsample((2000, 3000), StitchConfig(max_side=4096)) == 1.0
    assert map_downsample((2000, 3000), StitchConfig(downsample=2.5)) == 2.5
    assert map_shape((10000, 3001), 3.0) == (1001, 3334)


def check_ngff_image(group: zarr.Group, name: str, pixel_um: float) -> None:
    """The NGFF 0.5 rules for one image group (https://ngff.openmicroscopy.org/0.5/)."""
    ome = group[name].attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    axes = multiscale["axes"]
    types = [a.get("type") for a in axes]
    assert 2 <= len(axes) <= 5 and types.count("space") in (2, 3)
    assert types == sorted(types, key=["time", "channel", "space"].index)  # t, c before space
    assert len({a["name"] for a in axes}) == len(axes)
    for k, dataset in enumerate(multiscale["datasets"]):
        array = group[name][dataset["path"]]
        assert array.ndim == len(axes)
        assert list(array.metadata.dimension_names) == [a["name"] for a in axes]
        kinds = [t["type"] for t in dataset["coordinateTransformations"]]
        assert kinds in (["scale"], ["scale", "translation"])  # scale first, at most one each
        scale = dataset["coordinateTransformations"][0]["scale"]
        assert len(scale) == len(axes)
        assert scale[-2:] == [pytest.approx(pixel_um * 2 ** k)] * 2
        assert array.shape[-2:] == tuple(-(-n // 2 ** k) for n in group[name]["0"].shape[-2:])
    assert max(array.shape[-2:]) <= 256 < max(group[name]["0"].shape[-2:]) or k == 0


def test_stitch_slide_writes_ome_maps_and_skips_when_current(tmp_path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "cmu")
    config = StitchConfig(max_side=512)
    path = stitch_slide(slide_dir, annotations, config)
    assert path == slide_dir / MAPS
    maps = open_maps(slide_dir)
    patches = zarr.open_group(slide_dir / "patches.zarr", mode="r")
    explain = zarr.open_group(slide_dir / EXPLAIN, mode="r")
    coords, attention = patches["coords"][:], explain["attention"][:]
    assert maps.downsample == 6.0 and maps.pixel_um == pytest.approx(6 * 0.499)
    assert maps.heatmaps == ["attention", "attention_rank", "gradcam", "hirescam"]
    images = [str(k) for k in range(len(maps.heatmaps) + 1)]  # the heatmaps, then the thumbnail
    for name in [*images, "4/labels/tissue", "4/labels/lesion", "4/labels/artefacts"]:
        check_ngff_image(maps.group, name, maps.pixel_um)
    assert maps.group.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}
    assert maps.group["OME"].attrs["ome"]["series"] == images
    assert maps.group["4/labels"].attrs["ome"]["labels"] == ["tissue", "lesion", "artefacts"]
    a, tissue = maps["attention"], maps.tissue
    assert a.shape == tissue.shape == (495, 370) and maps.thumbnail.shape == (495, 370, 3)
    assert np.isnan(a[~tissue]).all() and np.isfinite(a[tissue]).all()
    grid = PatchGrid(coords, 256.0, 6.0, a.shape)
    for i in range(len(coords)):  # stride = footprint: no overlap, each patch its own value
        block = a[grid.r0[i]:grid.r1[i], grid.c0[i]:grid.c1[i]]
        np.testing.assert_array_equal(block, np.float32(attention[i]))
    rank = maps["attention_rank"]
    assert np.nanmax(rank) == 1.0 and np.nanmin(rank) == 0.0
    assert rank[np.unravel_index(np.nanargmax(a), a.shape)] == 1.0
    lesion = maps.lesion
    assert lesion[round(1500 / 6), round(1100 / 6)] == 1 and lesion[10, 10] == 0
    assert 70 ** 2 < (lesion == 1).sum() < 90 ** 2  # a 500 px square at D = 6: ~83² px
    assert maps.attrs["lesion_names"] == ["Tumor 1"]
    gradcam = maps["gradcam"]
    assert lesion[np.unravel_index(np.nanargmax(gradcam), a.shape)] == 1  # Grad-CAM peaks on the lesion
    labels = open_patch_store(slide_dir).artefacts.labels  # resampled by nearest neighbour
    assert maps.artefacts.dtype == np.uint8 and maps.artefacts.shape == a.shape
    assert set(np.unique(maps.artefacts)) <= set(np.unique(labels)) <= {0, 1, 2, 3}
    assert maps.attrs["artefact_kinds"] == {"1": "pen ink", "2": "tissue fold", "3": "blank or blurred"}
    thumb = maps.thumbnail
    assert thumb[~tissue].mean() > 200 and thumb[tissue].mean() < thumb[~tissue].mean()

    stamp = read_stamp(path)
    before = (path / "zarr.json").stat().st_mtime_ns
    stitch_slide(slide_dir, annotations, config)
    assert (path / "zarr.json").stat().st_mtime_ns == before
    stitch_slide(slide_dir, annotations,
                 StitchConfig(max_side=256))
    assert read_stamp(path) != stamp and open_maps(path).downsample == 12.0
    assert json.loads((path / "zarr.json").read_text())["attributes"]["source_sha256"] == \
        patches.attrs["source_sha256"]


def test_stitch_errors_name_the_store(tmp_path) -> None:
    slide_dir, _ = make_slide_case(tmp_path, "bad", lesion=False,
                                   attention=np.array([0.5, 0.5], np.float32))
    with pytest.raises(StoreError, match=r"2 attention values for .* patches.*rerun the explain"):
        stitch_slide(slide_dir, [], StitchConfig())
    assert not (slide_dir / MAPS).exists()
    with pytest.raises(StoreError, match=r"explain\.zarr: missing or incomplete"):
        stitch_slide(tmp_path / "slides" / "nothing", [], StitchConfig())
    with pytest.raises(StoreError, match=r"maps\.zarr: no complete maps store"):
        open_maps(slide_dir)


def test_stitch_takes_the_thumbnail_from_the_patch_store(tmp_path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "cmu")
    thumb = open_patch_store(slide_dir).thumbnail[...]
    assert thumb.dtype == np.uint8 and thumb.ndim == 3 and thumb.shape[2] == 3
    # stitching takes no slide path: the slide is never opened
    stitch_slide(slide_dir, annotations, StitchConfig(max_side=512))
    maps = open_maps(slide_dir)
    assert maps.thumbnail.shape == (*maps.tissue.shape, 3)
    # the patch store's thumbnail resampled: mean colour kept within a grey level
    np.testing.assert_allclose(maps.thumbnail.reshape(-1, 3).mean(0), thumb.reshape(-1, 3).mean(0), atol=1.5)


def set_version(path, version) -> None:
    group = zarr.open_group(path, mode="r+")
    if version is None:
        del group.attrs["format_version"]
    else:
        group.attrs["format_version"] = version


@pytest.mark.parametrize("version", [None, 99])
def test_a_store_of_another_format_version_is_not_current(tmp_path, version) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "cmu")
    config = StitchConfig(max_side=512)
    path = stitch_slide(slide_dir, annotations, config)
    stamp = read_stamp(path)
    assert is_current(path, **stamp)
    set_version(path, version)
    assert not is_current(path, **stamp)
    with pytest.raises(StoreError, match=f"maps.zarr: format version {version}.*rerun the stitch stage"):
        open_maps(slide_dir)
    stitch_slide(slide_dir, annotations, config)  # rewritten, current again
    assert is_current(path, **stamp) and open_maps(slide_dir).downsample == 6.0

    set_version(slide_dir / EXPLAIN, version)
    with pytest.raises(StoreError, match=f"explain.zarr: format version {version}.*rerun the explain"):
        open_explain_store(slide_dir / EXPLAIN, open_patch_store(slide_dir))
    set_version(slide_dir / PATCHES, version)
    with pytest.raises(StoreError, match=f"patches.zarr: format version {version}.*slideaudit tile"):
        open_patch_store(slide_dir)


def test_small_slides_get_maps_in_proportion_to_their_patches() -> None:
    # CMU-1-Small-Region (2220 x 2967 px) with 449 px patches: max_side alone gives D = 1
    assert map_downsample((2220, 2967), StitchConfig(), footprint=449.0) == 7.0   # 449 / 64
    assert map_downsample((80000, 60000), StitchConfig(), footprint=896.0) == 20.0  # max_side rules
    assert map_downsample((2220, 2967), StitchConfig(downsample=2.0), footprint=449.0) == 2.0


def test_stitching_many_patches_in_blocks_equals_one_patch_at_a_time() -> None:
    rng = np.random.default_rng(0)
    starts = np.arange(0, 60 * 97, 97)                      # overlapping 130 px patches, 60 x 60
    coords = np.stack(np.meshgrid(starts, starts), -1).reshape(-1, 2)
    coords = coords[rng.random(len(coords)) < 0.6]          # ~2,000 tissue patches
    cams = rng.normal(size=(len(coords), 4, 4)).astype(np.float32)
    shape = map_shape((60 * 97 + 33, 60 * 97 + 33), 3.0)
    many = PatchGrid(coords, 130.0, 3.0, shape, block_pixels=5_000)    # many small blocks
    mapped = many.stitch(cams, many.coverage())
    total, weight = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for xy, cam in zip(coords, cams, strict=True):
        one = PatchGrid(xy[None], 130.0, 3.0, shape)
        total = one.accumulate(cam[None], total)
        weight = one.accumulate(np.ones((1, 1, 1), np.float32), weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(weight > 0, total / weight, np.nan)
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(mapped).mean() > 0.5


def test_float_maps_are_stored_compressed_and_exact(tmp_path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "cmu")
    maps = open_maps(stitch_slide(slide_dir, annotations, StitchConfig(max_side=512)))
    explain = open_explain_store(slide_dir / EXPLAIN, open_patch_store(slide_dir))
    grid = PatchGrid(open_patch_store(slide_dir).coords, 256.0, maps.downsample, maps["gradcam"].shape)
    np.testing.assert_array_equal(maps["gradcam"], grid.stitch(explain["gradcam"], grid.coverage()))
    stored, plain = 0, 0   # bytes in maps.zarr, and with zarr's default codec (zstd alone)
    for name in maps.heatmaps:
        array = maps.pyramid(name)[0].array
        assert array.dtype == np.float32
        stored += array.nbytes_stored()
        plain += zarr.create_array({}, data=array[...], chunks=array.chunks, fill_value=np.nan).nbytes_stored()
    assert stored < 0.9 * plain  # shuffle + zstd: 18-30 % smaller than zstd alone
