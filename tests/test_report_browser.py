"""The reports in a real browser: headless Debian Chromium driven by Playwright."""
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from fake_stores import EVIL

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def archive(report_archive: dict[str, Path]) -> dict[str, Path]:
    return report_archive


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(`make system-deps`, or apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    page.close()


def open_file(page: Page, path: Path) -> None:
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")


def broken_images(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")


def column(page: Page, col: str) -> list[str | None]:
    """The data-sort values of one column of the index table, top to bottom (None: no cell)."""
    return page.eval_on_selector_all(
        "#slides-table tbody tr",
        "(rows, col) => rows.map(r => { const c = r.querySelector(`[data-col=\"${col}\"]`);"
        " return c ? c.getAttribute('data-sort') : null; })", col)


def test_slide_report_images_load(page, archive) -> None:
    open_file(page, archive["positive"] / "report.html")
    assert page.locator("figure.overlay").count() == 3
    assert page.locator("figure.overlay img").count() == 3 * 2  # map layer and outline layer
    assert page.eval_on_selector_all("img", "imgs => imgs.length") >= 3 + 1 + 2 * 6
    assert broken_images(page) == []
    assert page.locator("#validation .badge.ok").count() == 3


def test_index_sorts_and_shows_failures(page, archive) -> None:
    open_file(page, archive["index"])
    assert broken_images(page) == [] and page.locator("#distributions img").count() >= 3
    assert page.locator("tr.failure").inner_text().count("failed at tile") == 1
    page.click('th[data-col="slide"]')
    ids = column(page, "slide")
    assert ids == sorted(ids, key=str.lower)
    page.click('th[data-col="slide"]')
    assert column(page, "slide") == ids[::-1]
    page.click('th[data-col="gradcam.auroc"]')
    values = column(page, "gradcam.auroc")
    assert float(values[0]) > 0.9 and set(values[1:]) == {"", None}  # n/a and failures last
    assert page.get_attribute('th[data-col="gradcam.auroc"]', "aria-sort") == "ascending"
    page.click('th[data-col="gradcam.auroc"]')
    assert column(page, "gradcam.auroc")[0] == values[0]
    assert page.get_attribute('th[data-col="gradcam.auroc"]', "aria-sort") == "descending"
    page.click('th[data-col="flags"]')  # numeric: the number of flags, failures last
    assert column(page, "flags") == ["1", "2", "99"]
    page.click('th[data-col="flags"]')
    assert column(page, "flags") == ["99", "2", "1"]
    page.click('a:text("CMU-1 positive")')
    page.wait_for_load_state("load")
    assert page.url.endswith("/slides/positive/report.html")


def test_index_sorts_by_verdict_and_filters_what_needs_review(page, archive) -> None:
    open_file(page, archive["index"])
    page.click('th[data-col="verdict"]')  # pipeline errors first, then FAIL, REVIEW, PASS
    ranks = column(page, "verdict")
    assert ranks == sorted(ranks, key=float) and ranks[0] == "-1"
    rows = page.locator("#slides-table tbody tr")
    passing = page.locator('#slides-table tbody tr[data-verdict="PASS"]').count()
    page.check("#needs-review")
    assert page.locator("#slides-table tbody tr:visible").count() == rows.count() - passing
    page.uncheck("#needs-review")
    assert page.locator("#slides-table tbody tr:visible").count() == rows.count()


def test_script_in_a_slide_id_shows_as_text(page, archive) -> None:
    open_file(page, archive["index"])
    assert page.locator(f'#slides-table a:text-is("{EVIL}")').count() == 1
    open_file(page, archive["evil"] / "report.html")
    assert page.inner_text("#slide-id") == EVIL
    assert page.title() == f"Slide audit: {EVIL}"
    assert page.dialogs == []
    assert broken_images(page) == []


def test_maps_show_at_natural_size_and_enlarge_on_click(page, archive) -> None:
    open_file(page, archive["positive"] / "report.html")
    assert broken_images(page) == []
    view = page.locator("#heatmaps .stack").first
    shown = view.bounding_box()
    natural = page.eval_on_selector("#heatmaps .stack img", "i => [i.naturalWidth, i.naturalHeight]")
    assert natural[0] >= 1024 or natural[1] >= 1024  # maps rendered at >= 1024 px
    assert shown["width"] == pytest.approx(min(natural[0], 1216), abs=3)  # natural size within the page
    assert page.locator("dialog#enlarged").is_visible() is False
    view.click()
    dialog = page.locator("dialog#enlarged")
    assert dialog.is_visible()
    enlarged = page.eval_on_selector("dialog#enlarged .stack", "s => s.getBoundingClientRect().width")
    assert enlarged == pytest.approx(2 * natural[0], abs=3)
    assert page.eval_on_selector("dialog#enlarged .stack", "s => getComputedStyle(s).backgroundImage"
                                 ).startswith('url("data:image/jpeg')  # the slide under the map
    dialog.locator("button").click()
    assert not dialog.is_visible()
    assert page.locator("#more-metrics table").is_visible() is False  # top-k columns folded away
    page.locator("#more-metrics summary").click()
    assert page.locator("#more-metrics th").count() == 1 + 8
    assert page.locator("#closeups .stack").count() >= 2 and broken_images(page) == []


def test_index_rows_show_a_thumbnail_the_model_and_the_run_date(page, archive) -> None:
    open_file(page, archive["index"])
    assert broken_images(page) == []
    rows = page.locator("#slides-table tbody tr:not(.failure)")
    assert rows.count() == 2 and rows.locator("img.row-thumb").count() == 2
    sizes = page.eval_on_selector_all("img.row-thumb",
                                      "imgs => imgs.map(i => Math.max(i.naturalWidth, i.naturalHeight))")
    assert sizes == [96, 96]
    first = rows.first.locator("td[data-col=slide] .hint").inner_text()
    assert first.startswith("model ") and "unknown" not in first and " 20" in first  # name · date
    assert rows.first.locator(".viewer-link").count() == 1
    assert rows.first.locator(".viewer-link").is_hidden()  # opened from disk: the viewer needs `serve`
