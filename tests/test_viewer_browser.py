"""The deep-zoom viewer in headless Chromium, served by `slideaudit serve --reports` with no network."""
from __future__ import annotations

import io
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from axe import violations
from openslide import OpenSlide
from PIL import Image
from playwright.sync_api import Page, Route, sync_playwright
from serve_process import CHROMIUM_ARGS, chromium, serving

from fake_stores import real_slide
from tiling.deepzoom import DeepZoomGrid
from tiling.store.records import load_audit

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LOAD_TIMEOUT_MS = 180_000
# True once both viewers have every layer and every shown layer has all the tiles it needs at the current view.
LOADED = """() => {
  const s = window.slideViewer;
  if (!s || ["left", "right"].some(k => Object.keys(s.items[k]).length < s.expected)) { return false; }
  return Object.values(s.viewers).every(v => {
    for (let i = 0; i < v.world.getItemCount(); i++) {
      const item = v.world.getItemAt(i);
      if (item.getOpacity() > 0 && !item.getFullyLoaded()) { return false; }
    }
    return true;
  });
}"""
FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
# Each viewer's centre (level-0 px) and image zoom (screen px per level-0 px).
VIEW = """() => Object.values(window.slideViewer.viewers).map(v => {
  const item = v.world.getItemAt(0), c = item.viewportToImageCoordinates(v.viewport.getCenter(true));
  return {x: c.x, y: c.y, zoom: item.viewportToImageZoom(v.viewport.getZoom(true))};
})"""
LESION = (850, 1250, 1350, 1750)   # fake_stores.make_slide_case's square lesion, level-0 px


@pytest.fixture(scope="module")
def server(report_archive, tmp_path_factory) -> Iterator[str]:
    with serving(["--reports", str(report_archive["index"].parent)], tmp_path_factory.mktemp("viewer")) as base:
        yield base


@pytest.fixture(scope="module")
def offline(server) -> Iterator[tuple[Page, list[str], list[str], list[str]]]:
    """A page whose every request outside the server is aborted; (page, requested URLs, aborted
    URLs, console errors and uncaught exceptions)."""
    requested: list[str] = []
    aborted: list[str] = []
    errors: list[str] = []

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
        page = context.new_page()
        page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        yield page, requested, aborted, errors
        browser.close()


def shot(page: Page, selector: str) -> np.ndarray:
    settle(page)
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"), np.float64)


def settle(page: Page) -> None:
    page.evaluate(FRAMES)
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    page.evaluate(FRAMES)


def test_zoom_to_a_numbered_peak_read_its_tooltip_and_change_the_layers(offline, server, report_archive,
                                                                         tmp_path) -> None:
    page, requested, aborted, errors = offline
    page.goto(server + "/reports/slides/positive/report.html")
    page.click("#viewer-link")
    page.wait_for_url("**/reports/slides/positive/viewer/**")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "overview.png"))
    assert errors == []                                                          # CSP-clean: no console error
    assert page.input_value("#pane-left .heat-layer") == "attention"
    assert page.input_value("#pane-right .heat-layer") == "gradcam"
    audit = load_audit(report_archive["positive"] / "audit.json")
    # each pane shows its own map's markers only, numbered by rank
    left = page.locator("#osd-left .marker")
    right = page.locator("#osd-right .marker")
    assert left.count() == len(audit["peaks"]["attention"]) + len(audit["top_patches"])
    assert right.count() == len(audit["peaks"]["gradcam"])
    assert sorted(right.all_inner_texts()) == [str(i + 1) for i in range(len(audit["peaks"]["gradcam"]))]

    page.select_option("#markers", label="A-MIL attention peak 1")             # fly there, then to the deepest level
    page.evaluate("""() => { const v = window.slideViewer.viewers.left.viewport;
                             v.zoomTo(v.getMaxZoom(), null, true); v.applyConstraints(true); }""")
    heat60 = shot(page, "#osd-left")
    with OpenSlide(real_slide()) as slide:
        deepest = DeepZoomGrid(*slide.dimensions).level_count - 1
    assert any(f"/slide_files/{deepest}/" in u for u in requested)
    assert any(f"/layers/attention_files/{deepest}/" in u for u in requested)
    assert any(f"/layers/gradcam_files/{deepest}/" in u for u in requested)       # the synced right viewer
    peak = audit["peaks"]["attention"][0]
    for view in page.evaluate(VIEW):                                              # both viewers, at the peak
        assert abs(view["x"] - peak["x"]) < 100 and abs(view["y"] - peak["y"]) < 100

    marker = page.locator("#osd-left .marker.peak", has_text="1")
    box = marker.bounding_box()
    centre = page.evaluate("""([x, y]) => { const v = window.slideViewer.viewers.left, item = v.world.getItemAt(0);
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const r = v.element.getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }""", [peak["x"], peak["y"]])
    assert abs(box["x"] + box["width"] / 2 - centre[0]) < 2 and abs(box["y"] + box["height"] / 2 - centre[1]) < 2
    marker.hover()
    tip = page.locator("#marker-tip")
    assert tip.is_visible()
    assert tip.inner_text().splitlines() == ["A-MIL attention: peak 1", f"value {peak['value']:.4g}",
                                             "on lesion Tumor 1", "on no artefact"]
    page.mouse.move(5, 5)
    assert not tip.is_visible()
    marker.focus()                                                                # the keyboard shows it too
    assert tip.is_visible() and "A-MIL attention: peak 1" in tip.inner_text()
    page.keyboard.press("Escape")
    assert not tip.is_visible()

    page.locator("#opacity").fill("100")
    heat100 = shot(page, "#osd-left")
    page.select_option("#pane-left .heat-layer", "")                               # the slide alone
    slide_only = shot(page, "#osd-left")
    assert page.locator("#osd-left .marker").count() == 0                       # no map, no markers
    assert np.abs(heat100 - heat60).mean() > 3                                   # more opaque: other pixels
    assert np.abs(heat100 - slide_only).mean() > 10                              # the overlay was drawn
    assert slide_only.std() > 10                                                 # tissue, not a blank canvas
    assert "µm" in page.inner_text("#scalebar-left") or "mm" in page.inner_text("#scalebar-left")
    assert "100 %" in page.inner_text("#legend-right")
    assert aborted == [] and all(u.startswith(server) for u in requested)
    assert errors == []
    page.screenshot(path=str(tmp_path / "viewer.png"))


def test_smooth_maps_the_lesion_polygon_and_fly_to_lesion(offline, server) -> None:
    page, requested, _, errors = offline
    page.goto(server + "/reports/slides/positive/viewer/")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    page.click("#fly-lesion")
    settle(page)
    page.locator("#opacity").fill("100")
    lattice = shot(page, "#osd-right")
    page.select_option("#display", "smooth")
    smooth = shot(page, "#osd-right")
    assert any("/smooth/gradcam_files/" in u for u in requested)
    shown = page.evaluate("""() => Object.fromEntries(Object.entries(window.slideViewer.items.right)
        .filter(([k]) => k.startsWith("gradcam")).map(([k, item]) => [k, item.getOpacity()]))""")
    assert shown == {"gradcam": 0, "gradcam~smooth": 1}                          # the interpolated tiles, not the raw
    assert np.abs(smooth - lattice).mean() > 0.3                                 # (their smoothness: test_viewer.py)
    for view in page.evaluate(VIEW):
        assert abs(view["x"] - 1100) < 10 and abs(view["y"] - 1500) < 10          # the lesion's centre
    # the outline is the annotation's square, drawn where the slide's px are: its corners on screen
    outline = page.locator("#osd-left svg.lesions path.over").bounding_box()
    corners = page.evaluate("""(b) => { const v = window.slideViewer.viewers.left, item = v.world.getItemAt(0);
        const r = v.element.getBoundingClientRect();
        return [[b[0], b[1]], [b[2], b[3]]].map(([x, y]) => {
          const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
          return [r.left + p.x, r.top + p.y]; }); }""",
                            list(LESION))
    assert abs(outline["x"] - corners[0][0]) < 3 and abs(outline["y"] - corners[0][1]) < 3
    assert abs(outline["x"] + outline["width"] - corners[1][0]) < 3
    assert abs(outline["y"] + outline["height"] - corners[1][1]) < 3
    assert outline["width"] > 0.5 * page.locator("#osd-left").bounding_box()["width"]   # the lesion fills the view
    page.uncheck(".label-layer[value=lesion]")
    assert not page.locator("#osd-left svg.lesions").is_visible()
    page.check(".label-layer[value=lesion]")
    assert errors == []


def test_next_slide_keeps_the_view_and_the_layers_and_axe_finds_nothing_serious(offline, server) -> None:
    page, _, _, errors = offline
    page.goto(server + "/reports/slides/positive/viewer/")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    assert violations(page) == []
    page.select_option("#pane-left .heat-layer", "attention_rank")
    page.select_option("#pane-right .heat-layer", "hirescam")
    page.select_option("#display", "smooth")
    page.select_option("#markers", label="A-MIL attention peak 1")
    settle(page)
    [before, _] = page.evaluate(VIEW)
    page.click("#next-slide")
    page.wait_for_url("**/reports/slides/evil/viewer/**")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    assert page.inner_text("#slide-list option:checked") == "evil"
    assert page.input_value("#pane-left .heat-layer") == "attention_rank"
    assert page.input_value("#pane-right .heat-layer") == "hirescam"
    assert page.input_value("#display") == "smooth"
    for view in page.evaluate(VIEW):                                              # the same place, the same zoom
        assert abs(view["x"] - before["x"]) < 2 and abs(view["y"] - before["y"]) < 2
        assert view["zoom"] == pytest.approx(before["zoom"], rel=0.01)
    assert page.is_disabled("#fly-lesion")                                        # evil has no lesion
    assert violations(page) == []
    page.click("#prev-slide")
    page.wait_for_url("**/reports/slides/positive/viewer/**")
    page.wait_for_function(LOADED, timeout=LOAD_TIMEOUT_MS)
    assert page.input_value("#pane-right .heat-layer") == "hirescam"
    assert errors == []
