"""`slideaudit serve` as a real subprocess on a free loopback port, driven by headless Chromium."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from serve_process import CHROMIUM_ARGS, chromium, serving

from conftest import shared_file
from explainers.models.config import ModelConfig
from explainers.models.io import build_model, save_model
from tiling.slide import open_slide

pytestmark = pytest.mark.browser

CLASSES = ["normal", "lesion", "stroma", "necrosis", "fat", "mucin"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The model, a real H&E patch (224 px at 1 µm/px, recorded in the PNG), a text file, the reports."""
    root = tmp_path_factory.mktemp("serve")
    config = ModelConfig(classes=CLASSES, seed=3)
    model_dir = save_model(build_model(config), config, root / "model")
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as slide:
        patch = slide.read_at_mpp((900, 1300), (224, 224), 1.0)
    Image.fromarray(patch).save(root / "patch.png", dpi=(25400, 25400))
    (root / "notes.txt").write_text("Clinical notes: not an image.\n")
    reports = root / "audit"
    (reports / "slides" / "s1").mkdir(parents=True)
    (reports / "index.html").write_text("<html><body><h1>Audit index</h1></body></html>")
    (reports / "slides" / "s1" / "report.html").write_text("<html><body><h1>Slide s1</h1></body></html>")
    (root / "secret.txt").write_text("outside the reports")
    return {"root": root, "model": model_dir, "patch": root / "patch.png", "text": root / "notes.txt",
            "reports": reports}


@pytest.fixture(scope="module")
def server(files) -> Iterator[str]:
    """The base URL of a running `slideaudit serve` (1 MB upload limit); stopped afterwards."""
    with serving(["--model", str(files["model"]), "--reports", str(files["reports"]), "--max-upload-mb", "1"],
                 files["root"]) as base:
        yield base


@pytest.fixture(scope="module")
def page(server) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def submit(page: Page, server: str, image: Path, target: str = "", method: str = "gradcam") -> int:
    """Fill the form on the home page, send it, return the response's HTTP status."""
    page.goto(server + "/")
    page.set_input_files("input[name=image]", str(image))
    page.select_option("select[name=target]", target)
    page.select_option("select[name=method]", method)
    with page.expect_response(lambda r: r.url.endswith("/explain")) as response:
        page.click("button[type=submit]")
    page.wait_for_load_state()
    return response.value.status


def test_upload_pick_a_class_and_see_its_overlay_and_the_top5(page, server, files, tmp_path):
    assert submit(page, server, files["patch"], target="lesion", method="gradcampp") == 200
    figure = page.locator("figure.overlay")
    assert figure.count() == 1 and page.locator("section.target-section").count() == 0
    assert figure.get_attribute("data-class") == "lesion" and figure.get_attribute("data-method") == "gradcampp"
    assert "Grad-CAM++ for “lesion”" in figure.inner_text()
    assert figure.locator("img").evaluate("img => img.complete && img.naturalWidth") == 224
    box, table = figure.bounding_box(), page.locator("#top5").bounding_box()
    assert abs(box["y"] - table["y"]) < 40 and box["x"] + box["width"] <= table["x"]   # side by side
    rows = page.locator("#top5 tr").all_inner_texts()[1:]
    assert len(rows) == 5
    assert {row.split("\t")[1] for row in rows} <= set(CLASSES)
    percents = [float(row.split("\t")[2].rstrip(" %")) for row in rows]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.05
    assert "1 µm/px" in page.inner_text("main")                                   # read from the PNG
    assert page.input_value("select[name=target]") == "lesion"                     # the choice is kept
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)


def test_the_predicted_class_is_explained_when_none_is_picked(page, server, files):
    assert submit(page, server, files["patch"]) == 200
    first = page.locator("#top5 tr").nth(1).inner_text().split("\t")[1]
    assert page.locator("figure.overlay").get_attribute("data-class") == first


def test_a_text_file_uploaded_as_an_image_gets_a_4xx_message(page, server, files):
    status = submit(page, server, files["text"])
    assert 400 <= status < 500
    assert "notes.txt: not a PNG, JPEG or TIFF image" in page.inner_text("[role=alert]")
    assert page.locator("figure.overlay").count() == 0
    assert page.locator("input[name=image]").count() == 1                            # the form is there to retry


def test_too_large_and_unsupported_uploads_are_refused(page, server, files):
    big = np.random.default_rng(0).integers(0, 255, 1_500_000, dtype=np.uint8).tobytes()
    response = page.request.post(server + "/explain", multipart={
        "image": {"name": "big.png", "mimeType": "image/png", "buffer": big}})
    assert response.status == 413 and "larger than the limit of 1 MB" in response.text()
    buffer = Path(files["root"] / "deep.png")
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(buffer)
    response = page.request.post(server + "/explain", multipart={
        "image": {"name": "deep.png", "mimeType": "image/png", "buffer": buffer.read_bytes()}})
    assert response.status == 415 and "unsupported image mode" in response.text()
    response = page.request.post(server + "/explain", multipart={"target": "lesion"})
    assert response.status == 400 and "no image was uploaded" in response.text()


def test_reports_are_served_read_only_without_path_traversal(page, server, files):
    page.goto(server + "/")
    page.click("text=Audit reports")
    assert page.inner_text("h1") == "Audit index"
    assert page.request.get(server + "/reports/slides/s1/report.html").text().count("Slide s1") == 1
    for path in ("/reports/%2e%2e/secret.txt", "/reports/..%2fsecret.txt", "/reports/%2e%2e%2fsecret.txt"):
        response = page.request.get(server + path)
        assert response.status == 404 and "outside the reports" not in response.text()
    assert page.request.put(server + "/reports/index.html", data="x").status == 405


def test_listens_on_loopback_and_keeps_nothing_on_disk(server, files):
    log = (files["root"] / "serve.log").read_text()
    assert f"Uvicorn running on {server}" in log and server.startswith("http://127.0.0.1:")
    assert list((files["root"] / "tmp").iterdir()) == [] and list((files["root"] / "cwd").iterdir()) == []
