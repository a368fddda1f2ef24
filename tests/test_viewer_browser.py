"""The deep-zoom viewer in headless Chromium, served by `slideaudit serve --reports` with no network."""
from __future__ import annotations

import io
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from openslide import OpenSlide
from PIL import Image
from playwright.sync_api import Page, Route, sync_playwright
from serve_process import CHROMIUM_ARGS, chromium, serving

from fake_stores import real_slide
from tiling.deepzoom import DeepZoomGrid
from tiling.store.records import load_audit

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LOAD_TIMEOUT_MS = 180_000
# True once every shown layer of both viewers has all the tiles it needs at the current view.
LOADED = """() => {
  const s = window.slideViewer;
  if (!s || ["left", "right"].some(k => Object.keys(s.layers[k]).length < s.config.layers.length)) { return false; }
  return Object.values(s.viewers).every(v => {
    for (let i = 0; i < v.world.getItemCount(); i++) {
      const item = v.world.getItemAt(i);
      if (item.getOpacity() > 0 && !item.getFullyLoaded()) { return false; }
    }
    return true;
  });
}"""
FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


@pytest.fixture(scope="module")
def server(report_archive, tmp_path_factory) -> Iterator[str]:
    with serving(["--reports", str(report_archive["index"].parent)], tmp_path_factory.mktemp("viewer")) as base:
        yield base


@pytest.fixture(scope="module")
def offline(server) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page whose every request outside the server is aborted; (page, requested URLs, aborted URLs)."""
    requested: list[str] = []
    aborted: list[str] = []

    def only_localhost(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == urlsplit(server).netloc:
            requested.append(url)
            route.continue_()
        else:
            aborted.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", only_localhost)
        yield context.new_page(), requested, aborted
        browser.close()


def shot(page: Page, selector: str) -> np.ndarray:
    page.evaluate(FRAMES)
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    page.evaluate(FRAMES)
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"), np.float64)


def test_zoom_to_a_peak_toggle_a_layer_and_change_the_opacity(offline, server, report_archive, tmp_path) -> None:
    page, requested, aborted = offline
    page.goto(server + "/reports/slides/positive/report.html")
    page.click("#viewer-link")
    page.wait_for_url("**/reports/slides/positive/viewer/")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "overview.png"))
    assert page.input_value("#pane-left .heat-layer") == "attention"
    assert page.input_value("#pane-right .heat-layer") == "gradcam"

    page.select_option("#markers", label="A-MIL attention peak 1")        # fly there, then to the deepest level
    page.evaluate("""() => { const v = window.slideViewer.viewers.left.viewport;
                             v.zoomTo(v.getMaxZoom(), null, true); v.applyConstraints(true); }""")
    heat60 = shot(page, "#osd-left")
    with OpenSlide(real_slide()) as slide:
        deepest = DeepZoomGrid(*slide.dimensions).level_count - 1
    assert any(f"/slide_files/{deepest}/" in u for u in requested)
    assert any(f"/layers/attention_files/{deepest}/" in u for u in requested)
    assert any(f"/layers/gradcam_files/{deepest}/" in u for u in requested)       # the synced right viewer
    centre = page.evaluate("""() => Object.values(window.slideViewer.viewers).map(v =>
        v.world.getItemAt(0).viewportToImageCoordinates(v.viewport.getCenter(true)))""")
    peak = load_audit(report_archive["positive"] / "audit.json")["peaks"]["attention"][0]
    for point in centre:                                                       # both viewers, at the peak
        assert abs(point["x"] - peak["x"]) < 100 and abs(point["y"] - peak["y"]) < 100

    page.locator("#opacity").fill("100")
    heat100 = shot(page, "#osd-left")
    page.select_option("#pane-left .heat-layer", "")                             # the slide alone
    slide_only = shot(page, "#osd-left")
    assert np.abs(heat100 - heat60).mean() > 3                                 # more opaque: other pixels
    assert np.abs(heat100 - slide_only).mean() > 10                            # the overlay was drawn
    assert slide_only.std() > 10                                               # tissue, not a blank canvas
    assert "µm" in page.inner_text("#scalebar-left") or "mm" in page.inner_text("#scalebar-left")
    assert "100 %" in page.inner_text("#legend-right")
    assert aborted == [] and all(u.startswith(server) for u in requested)
    page.screenshot(path=str(tmp_path / "viewer.png"))
