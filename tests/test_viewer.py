"""The deep-zoom viewer's grid, map tiles and routes, on the real CMU-1 slide's audited folder."""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from openslide import OpenSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient

from fake_stores import real_slide
from pipeline.viewer import slide_folder, viewer_routes
from tiling.deepzoom import OVERLAP, TILE_SIZE, DeepZoomGrid, map_tile
from tiling.store import seal_store
from tiling.store.ome import Level
from tiling.store.records import load_audit


@pytest.fixture(scope="module")
def client(report_archive: dict[str, Path]) -> TestClient:
    out = report_archive["positive"].parents[1]
    return TestClient(Starlette(routes=viewer_routes(out)))


def viewer_url(folder: str, rest: str = "") -> str:
    return f"/reports/slides/{folder}/viewer/{rest}"


def image_at(client: TestClient, url: str) -> np.ndarray:
    """The image the server answers `url` with, as an array."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_the_grid_is_openslides_deep_zoom_grid() -> None:
    with OpenSlide(real_slide()) as slide:
        dz = DeepZoomGenerator(slide, TILE_SIZE, OVERLAP, limit_bounds=False)
        grid = DeepZoomGrid(*slide.dimensions)
        assert grid.level_count == dz.level_count
        for level in range(dz.level_count):
            assert grid.level_size(level) == dz.level_dimensions[level]
            cols, rows = dz.level_tiles[level]
            for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
                x0, y0, x1, y1 = grid.tile_box(level, col, row)
                assert (x1 - x0, y1 - y0) == dz.get_tile_dimensions(level, (col, row))
            assert grid.tile_box(level, cols, 0) is None and grid.tile_box(level, 0, rows) is None
        assert grid.tile_box(dz.level_count, 0, 0) is None


def test_map_tiles_sample_the_level_nearest_the_tile_scale() -> None:
    grid = DeepZoomGrid(1024, 512, tile_size=256, overlap=0)         # 11 levels; level 10 is level 0
    fine = np.arange(16 * 32, dtype=np.float32).reshape(16, 32)         # 32 level-0 px per map px
    coarse = np.full((8, 16), -1.0, np.float32)                         # 64 level-0 px per map px
    levels = [Level(zarr.create_array(store={}, data=fine, chunks=(4, 4)), 32.0),
              Level(zarr.create_array(store={}, data=coarse, chunks=(4, 4)), 64.0)]
    tile = map_tile(levels, grid, 10, 1, 0)                             # x 256..511, y 0..255 at 1:1
    assert tile.shape == (256, 256)
    assert tile[0, 0] == fine[0, 8] and tile[255, 255] == fine[7, 15] and tile[40, 37] == fine[1, 9]
    assert (map_tile(levels, grid, 4, 0, 0) == -1).all()                # 64 level-0 px per tile px: coarse
    assert map_tile(levels, grid, 5, 0, 0)[0, 31] == fine[0, 31]        # 32: fine
    assert map_tile(levels, grid, 10, 4, 0) is None


def test_the_page_lists_every_map_and_the_audits_markers(client, report_archive) -> None:
    response = client.get(viewer_url("positive"))
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    text = response.text
    assert re.search(r'<script src="/static/openseadragon/openseadragon\.min\.js">', text)
    assert "http://" not in text.replace("http://schemas.microsoft.com", "") and "https://" not in text
    for layer in ("attention", "attention_rank", "gradcam", "lesion"):
        assert f'value="{layer}"' in text
    peaks = load_audit(report_archive["positive"] / "audit.json")["peaks"]["attention"]
    assert f"A-MIL attention peak {len(peaks)}" in text and "Top patch 1" in text
    assert client.get("/static/openseadragon/LICENSE.txt").text.startswith("Copyright")
    assert 'href="viewer/"' in (report_archive["positive"] / "report.html").read_text()
    [href] = re.findall(r'href="(slides/positive/viewer/)"', report_archive["index"].read_text())
    assert client.get(f"/reports/{href}").status_code == 200  # the index's link, relative to /reports/index.html


def test_tiles_show_the_slide_and_colour_the_attention_peak(client, report_archive) -> None:
    width, height = Image.open(real_slide()).size
    grid = DeepZoomGrid(width, height)
    deepest = grid.level_count - 1
    peak = load_audit(report_archive["positive"] / "audit.json")["peaks"]["attention"][0]
    col, row = peak["x"] // TILE_SIZE, peak["y"] // TILE_SIZE
    slide = client.get(viewer_url("positive", f"slide_files/{deepest}/{col}_{row}.jpeg"))
    assert slide.status_code == 200 and slide.headers["content-type"] == "image/jpeg"
    with OpenSlide(real_slide()) as osr:
        expected = np.asarray(DeepZoomGenerator(osr, TILE_SIZE, OVERLAP).get_tile(deepest, (col, row)).convert("RGB"))
    got = np.asarray(Image.open(io.BytesIO(slide.content)))
    assert got.shape == expected.shape                               # the same pixels, up to JPEG loss
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95 and abs(got.mean() - expected.mean()) < 3
    heat = image_at(client, viewer_url("positive", f"layers/attention_files/{deepest}/{col}_{row}.png"))
    assert heat.shape == (*expected.shape[:2], 4)
    x, y = peak["x"] - col * TILE_SIZE + OVERLAP * (col > 0), peak["y"] - row * TILE_SIZE + OVERLAP * (row > 0)
    assert heat[y, x, 3] == heat[..., 3].max() > 240               # the peak is the most opaque: top of the scale
    overview = image_at(client, viewer_url("positive", "layers/attention_files/8/0_0.png"))
    assert (overview[..., 3] == 0).any() and (overview[..., 3] > 0).any()   # off tissue is transparent


@pytest.mark.parametrize("path", [
    viewer_url("positive", "slide_files/99/0_0.jpeg"), viewer_url("positive", "slide_files/12/99_0.jpeg"),
    viewer_url("positive", "layers/nomap_files/8/0_0.png"), viewer_url("positive", "layers/thumbnail_files/8/0_0.png"),
    viewer_url("positive", "layers/lesion_files/8/0_0.png"),                    # lesions are polygons (lesions.geojson)
    viewer_url("unknown"), viewer_url("broken"), viewer_url("%2e%2e"), viewer_url("..%2F..%2Fetc"),
    viewer_url("%2Fetc"), viewer_url("positive%2F..%2F..%2F.."),
    "/static/..%2Fviewer.py", "/static/%2e%2e/%2e%2e/pipeline/viewer.py",
])
def test_unknown_or_outside_paths_are_404(client, path) -> None:
    response = client.get(path)
    assert response.status_code == 404 and "import" not in response.text


@pytest.mark.parametrize("slide_id", ["..", ".", "../positive", "/etc", "a/../../b", "", "positive/../.."])
def test_slide_ids_that_are_not_folder_names_are_refused(report_archive, slide_id) -> None:
    with pytest.raises(HTTPException) as refused:
        slide_folder(report_archive["positive"].parents[1], slide_id)
    assert refused.value.status_code == 404


def test_a_symlink_out_of_the_reports_is_forbidden(report_archive, tmp_path) -> None:
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "escape").symlink_to(report_archive["positive"], target_is_directory=True)
    client = TestClient(Starlette(routes=viewer_routes(tmp_path)))
    assert client.get(viewer_url("escape")).status_code == 403
    assert client.get(viewer_url("escape", "slide_files/8/0_0.jpeg")).status_code == 403


def test_a_moved_slide_file_is_named_in_the_answer(report_archive, tmp_path) -> None:
    import shutil

    copy = tmp_path / "slides" / "moved"
    shutil.copytree(report_archive["positive"], copy)
    zarr.open_group(copy / "patches.zarr", mode="r+").attrs["source_path"] = str(tmp_path / "gone.svs")
    response = TestClient(Starlette(routes=viewer_routes(tmp_path))).get(viewer_url("moved"))
    assert response.status_code == 404 and "gone.svs" in response.text and "put the slide file back" in response.text


def test_an_artefact_label_in_the_maps_becomes_a_mask_layer(report_archive, tmp_path) -> None:
    import shutil

    from reports.overlays import ARTEFACT_RGBA
    from tiling.store.maps import ARTEFACTS, LABEL_RGBA, open_maps
    from tiling.store.ome import write_image

    copy = tmp_path / "slides" / "inked"
    shutil.copytree(report_archive["positive"], copy)
    maps = open_maps(copy)
    labels = np.zeros(maps["tissue"].shape, np.uint8)
    labels[: labels.shape[0] // 4, : labels.shape[1] // 4] = 1                 # ink in the top-left corner
    root = zarr.open_group(copy / "maps.zarr", mode="r+")
    del root[root.attrs["images"][ARTEFACTS]]                                # the stitched one: no artefact
    labels_group = root[root.attrs["images"]["thumbnail"] + "/labels"]
    label = write_image(labels_group, ARTEFACTS, labels, maps.pixel_um, "pen ink",
                        method="nearest", label_colours={1: LABEL_RGBA[ARTEFACTS]})
    assert root.attrs["images"][ARTEFACTS] == label.path
    seal_store(copy / "maps.zarr")  # edited on purpose, not damaged
    client = TestClient(Starlette(routes=viewer_routes(tmp_path)))
    assert 'class="label-layer" value="artefacts"' in client.get(viewer_url("inked")).text
    tile = image_at(client, viewer_url("inked", "layers/artefacts_files/8/0_0.png"))
    assert (tile[:10, :10] == ARTEFACT_RGBA).all() and (tile[-10:, -10:, 3] == 0).all()


def test_smooth_map_tiles_interpolate_between_map_pixel_centres() -> None:
    grid = DeepZoomGrid(256, 256, tile_size=256, overlap=0)            # level 8 is level 0
    values = np.array([[0.0, 4.0], [8.0, np.nan]], np.float32)          # 128 level-0 px per map px
    levels = [Level(zarr.create_array(store={}, data=values, chunks=(2, 2)), 128.0)]
    raw, smooth = map_tile(levels, grid, 8, 0, 0), map_tile(levels, grid, 8, 0, 0, smooth_px=128.0)
    assert np.unique(raw[np.isfinite(raw)]).tolist() == [0.0, 4.0, 8.0]  # the lattice: three blocks
    # tile px i has its centre at map coordinate f = (i + 0.5) / 128; between centres 0.5 and 1.5 it blends
    assert smooth[0, 0] == 0 and smooth[63, 63] == 0                     # before the first centre: clamped
    i = 96
    w = (i + 0.5) / 128 - 0.5                                            # the upper neighbour's weight
    assert smooth[0, i] == pytest.approx(w * 4.0)                        # row 0, along x: 0 -> 4
    assert smooth[i, 0] == pytest.approx(w * 8.0)                        # column 0, along y: 0 -> 8
    # (i, i): weights (1-w)², w(1-w), w(1-w) on 0, 4, 8 and w² on NaN, left out
    assert smooth[i, i] == pytest.approx(w * (1 - w) * 12.0 / (1 - w * w))
    assert np.isnan(smooth[200, 200]) and np.isnan(raw[200, 200])       # off tissue stays off tissue
    assert len(np.unique(smooth[np.isfinite(smooth)])) > 100             # a gradient, not blocks


def test_the_smooth_layer_is_served_and_differs_from_the_lattice(client) -> None:
    raw = image_at(client, viewer_url("positive", "layers/gradcam_files/10/1_1.png"))
    smooth = image_at(client, viewer_url("positive", "smooth/gradcam_files/10/1_1.png"))
    assert raw.shape == smooth.shape and (raw[..., 3] > 0).any()
    tissue = (raw[..., 3] > 0)[:, 1:] & (raw[..., 3] > 0)[:, :-1]
    jumps = [np.abs(np.diff(img[..., :3].astype(int), axis=1)).max(-1)[tissue].max() for img in (raw, smooth)]
    assert jumps[0] >= 2 * jumps[1]                                      # the patch seams are gone
    assert ((raw[..., 3] > 0) == (smooth[..., 3] > 0)).all()             # over the same tissue
    assert client.get(viewer_url("positive", "smooth/nomap_files/10/1_1.png")).status_code == 404


def test_the_lesion_polygons_are_the_annotations_in_level0_px(client, report_archive) -> None:
    response = client.get(viewer_url("positive", "lesions.geojson"))
    assert response.status_code == 200
    [feature] = response.json()["features"]
    annotation = json.loads((report_archive["positive"].parents[1] / "positive.geojson").read_text())
    assert feature["geometry"]["coordinates"] == annotation["features"][0]["geometry"]["coordinates"]
    assert feature["properties"] == {"name": "Tumor 1", "class": "Tumor"}
    assert client.get(viewer_url("evil", "lesions.geojson")).json()["features"] == []


def config_of(page: str) -> dict:
    """The viewer's config, as the page's script reads it from data-config."""
    [raw] = re.findall(r'data-config="([^"]*)"', page)
    return json.loads(html.unescape(raw))


def test_each_pane_gets_its_own_numbered_markers_with_their_tooltips(client, report_archive) -> None:
    audit = load_audit(report_archive["positive"] / "audit.json")
    markers = config_of(client.get(viewer_url("positive")).text)["markers"]
    for name, peaks in audit["peaks"].items():
        mine = [m for m in markers if m["kind"] == "peak" and name in m["layers"]]
        assert [m["rank"] for m in mine] == list(range(1, len(peaks) + 1))
        assert all(m["layers"] == ([name, "attention_rank"] if name == "attention" else [name]) for m in mine)
        for m, p in zip(mine, peaks, strict=True):
            assert m["x"] + m["w"] / 2 == p["x"] and m["y"] + m["h"] / 2 == p["y"]
            assert f"peak {m['rank']}" in m["tip"][0] and f"value {p['value']:.4g}" in m["tip"]
            assert m["tip"][3] == (f"on an artefact ({p['artefact']})" if p["artefact"] else "on no artefact")
    [attention_peak] = [m for m in markers if m["kind"] == "peak" and m["layers"][0] == "attention"]
    value = audit["peaks"]["attention"][0]["value"]
    assert attention_peak["tip"][:3] == ["A-MIL attention: peak 1", f"value {value:.4g}", "on lesion Tumor 1"]
    far = next(m for m in markers if m["layers"] == ["hirescam"])         # 476 µm from the lesion (audit.json)
    assert far["tip"][2] == "476 µm from lesion Tumor 1"
    patches = [m for m in markers if m["kind"] == "patch"]
    assert [m["rank"] for m in patches] == list(range(1, len(audit["top_patches"]) + 1))
    first = audit["top_patches"][0]                                        # (1024, 1280): inside 850..1350 x 1250..1750
    assert patches[0]["tip"][2] == "on lesion Tumor 1" and patches[0]["x"] == first["x"]
    outside = [m for m, p in zip(patches, audit["top_patches"], strict=True)
               if p["x"] + m["w"] < 850 or p["x"] > 1350 or p["y"] + m["h"] < 1250 or p["y"] > 1750]
    assert all(m["tip"][2] == "off the lesions" for m in outside)


def test_the_page_lists_the_slides_with_next_and_previous(client, report_archive) -> None:
    text = client.get(viewer_url("positive")).text
    config = config_of(text)
    assert config["slides"]["ids"] == ["evil", "positive"] and config["slides"]["current"] == 1   # "broken" has no maps
    assert re.search(r'id="next-slide" class="slide-step" href="\.\./\.\./evil/viewer/"', text)
    assert re.search(r'id="prev-slide" class="slide-step" href="\.\./\.\./evil/viewer/"', text)
    assert client.get(f"/reports/slides/positive/viewer/{config['slides']['urls'][0]}").status_code == 200
    assert "<script>" not in text.split("<body>")[1].replace('<script src="', "")                   # no inline script
    assert "onclick" not in text and " on" + "load=" not in text


def test_answers_never_show_where_out_lies(report_archive, tmp_path) -> None:
    import shutil

    copy = tmp_path / "slides" / "moved"
    shutil.copytree(report_archive["positive"], copy)
    zarr.open_group(copy / "maps.zarr", mode="r+").attrs["dimensions"] = [10, 10]    # maps of another slide
    client = TestClient(Starlette(routes=viewer_routes(tmp_path)))
    for url in (viewer_url("moved"), viewer_url("unknown"), viewer_url("unknown", "lesions.geojson")):
        response = client.get(url)
        assert response.status_code == 404 and str(tmp_path) not in response.text, response.text
    assert "slides/moved: maps.zarr is for a 10 x 10 px slide" in client.get(viewer_url("moved")).text
    (copy / "maps.zarr" / "lesions.geojson").unlink()
    gone = TestClient(Starlette(routes=viewer_routes(tmp_path))).get(viewer_url("moved", "lesions.geojson"))
    assert gone.status_code == 404 and "rerun the stitch stage" in gone.text and str(tmp_path) not in gone.text


def test_serve_help_gives_the_viewer_route_that_answers(client) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    [route] = re.findall(r"/reports/slides/<slide_id>/viewer/", help_text)
    assert "/viewer/<slide_id>/" not in help_text
    assert client.get(route.replace("<slide_id>", "positive")).status_code == 200


def test_smooth_tiles_need_no_explain_store(report_archive, tmp_path) -> None:
    import shutil

    copy = tmp_path / "slides" / "trimmed"
    shutil.copytree(report_archive["positive"], copy)
    shutil.rmtree(copy / "explain.zarr")                                   # kept stores: patches and maps only
    client = TestClient(Starlette(routes=viewer_routes(tmp_path)))
    smooth = image_at(client, viewer_url("trimmed", "smooth/gradcam_files/10/1_1.png"))
    assert (smooth[..., 3] > 0).any()                                      # smoothed over whole patches instead
