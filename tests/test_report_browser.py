"""The reports in a real browser: headless Debian Chromium driven by Playwright."""
from __future__ import annotations

from pathlib import Path

import pytest
from axe import violations
from playwright.sync_api import Page, sync_playwright

from fake_stores import EVIL, clone_archive
from reports.html import PAGE_ROWS, render_index

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


def sort_by(page: Page, col: str) -> None:
    page.click(f'th[data-col="{col}"] button')


def test_index_sorts_and_shows_failures(page, archive) -> None:
    open_file(page, archive["index"])
    assert broken_images(page) == [] and page.locator("#distributions img").count() >= 3
    assert page.locator("#failures-table tr.failure").inner_text().count("failed at tile") == 1
    assert page.locator("#slides-table tbody tr").count() == 2  # failures are grouped apart
    sort_by(page, "slide")
    ids = column(page, "slide")
    assert ids == sorted(ids, key=str.lower)
    sort_by(page, "slide")
    assert column(page, "slide") == ids[::-1]
    sort_by(page, "gradcam.auroc")
    values = column(page, "gradcam.auroc")
    assert float(values[0]) > 0.9 and values[1:] == [""]  # n/a last
    assert page.get_attribute('th[data-col="gradcam.auroc"]', "aria-sort") == "ascending"
    sort_by(page, "gradcam.auroc")
    assert column(page, "gradcam.auroc")[0] == values[0]
    assert page.get_attribute('th[data-col="gradcam.auroc"]', "aria-sort") == "descending"
    sort_by(page, "flags")  # numeric: the number of flags
    assert column(page, "flags") == ["1", "2"]
    sort_by(page, "flags")
    assert column(page, "flags") == ["2", "1"]
    page.click('a:text("CMU-1 positive")')
    page.wait_for_load_state("load")
    assert page.url.endswith("/slides/positive/report.html")


def test_index_sorts_by_keyboard(page, archive) -> None:
    open_file(page, archive["index"])
    button = page.locator('th[data-col="slide"] button')
    button.focus()
    assert page.evaluate("document.activeElement.closest('th').dataset.col") == "slide"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus shows
    page.keyboard.press("Enter")
    ids = column(page, "slide")
    assert ids == sorted(ids, key=str.lower)
    assert page.get_attribute('th[data-col="slide"]', "aria-sort") == "ascending"
    page.keyboard.press("Space")
    assert column(page, "slide") == ids[::-1]
    assert page.get_attribute('th[data-col="slide"]', "aria-sort") == "descending"
    page.keyboard.press("Tab")  # the next column's button
    page.keyboard.press("Enter")
    assert page.get_attribute('th[data-col="label"]', "aria-sort") == "ascending"
    assert page.get_attribute('th[data-col="slide"]', "aria-sort") is None


def test_index_sorts_by_verdict_and_filters_what_needs_review(page, archive) -> None:
    open_file(page, archive["index"])
    sort_by(page, "verdict")  # FAIL, REVIEW, UNCHECKED, PASS
    ranks = column(page, "verdict")
    assert ranks == sorted(ranks, key=float) and ranks == ["1", "3"]
    rows = page.locator("#slides-table tbody tr")
    passing = page.locator('#slides-table tbody tr[data-verdict="PASS"]').count()
    page.check("#needs-review")
    assert page.locator("#slides-table tbody tr:visible").count() == rows.count() - passing == 1
    page.uncheck("#needs-review")
    assert page.locator("#slides-table tbody tr:visible").count() == rows.count()
    page.fill("#find-slide", "cmu-1")
    assert page.locator("#slides-table tbody tr:visible").inner_text().startswith("CMU-1 positive")
    assert page.locator("#slides-table tbody tr:visible").count() == 1
    assert page.locator("#pager").is_hidden()  # one page


def test_index_and_a_review_report_pass_axe(page, archive) -> None:
    open_file(page, archive["index"])
    assert violations(page) == []
    open_file(page, archive["positive"] / "report.html")
    assert page.inner_text("#verdict").startswith("REVIEW")
    assert violations(page) == []
    open_file(page, archive["evil"] / "report.html")  # n/a everywhere: the old contrast failures
    assert violations(page) == []


def test_script_in_a_slide_id_shows_as_text(page, archive) -> None:
    open_file(page, archive["index"])
    assert page.locator(f'#slides-table a:text-is("{EVIL}")').count() == 1
    open_file(page, archive["evil"] / "report.html")
    assert page.inner_text("#slide-id") == EVIL
    assert page.title() == f"Slide audit: {EVIL}"
    assert page.dialogs == []
    assert broken_images(page) == []


def test_maps_show_side_by_side_and_enlarge_by_click_or_keyboard(page, archive) -> None:
    open_file(page, archive["positive"] / "report.html")
    assert broken_images(page) == []
    views = page.locator("#heatmaps button.stack")
    boxes = [views.nth(i).bounding_box() for i in range(views.count())]
    assert len(boxes) == 3
    assert len({round(b["y"]) for b in boxes}) == 1  # one row
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and boxes[1]["x"] + boxes[1]["width"] <= boxes[2]["x"]
    assert max(b["width"] for b in boxes) - min(b["width"] for b in boxes) < 1  # the same scale
    natural = page.eval_on_selector("#heatmaps .stack img", "i => [i.naturalWidth, i.naturalHeight]")
    assert natural[0] >= 1024 or natural[1] >= 1024  # maps rendered at >= 1024 px
    dialog = page.locator("dialog#enlarged")
    assert dialog.is_visible() is False
    views.first.click()
    assert dialog.is_visible()
    enlarged = page.eval_on_selector("dialog#enlarged .stack", "s => s.getBoundingClientRect().width")
    assert enlarged == pytest.approx(2 * natural[0], abs=3)
    assert page.eval_on_selector("dialog#enlarged .stack", "s => getComputedStyle(s).backgroundImage"
                                 ).startswith('url("data:image/jpeg')  # the slide under the map
    assert page.locator("dialog#enlarged .stack img").count() == 2  # the map and its marks
    dialog.locator("button.close").click()
    assert not dialog.is_visible()
    views.nth(2).focus()  # by keyboard: Enter opens, Escape closes, Space opens, Enter on "close" closes
    page.keyboard.press("Enter")
    assert dialog.is_visible()
    assert page.evaluate("document.activeElement.className") == "close"
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    views.nth(2).focus()
    page.keyboard.press("Space")
    assert dialog.is_visible()
    page.keyboard.press("Enter")
    assert not dialog.is_visible()
    assert page.locator("#more-metrics table").is_visible() is False  # top-k columns folded away
    page.locator("#more-metrics summary").click()
    assert page.locator("#more-metrics th").count() == 1 + 8
    assert page.locator("#closeups .stack").count() >= 2 and broken_images(page) == []


def test_the_index_of_a_thousand_slides_pages_and_groups_failures(page, archive, tmp_path) -> None:
    out = clone_archive(tmp_path, archive, 450, {"file not found; check the manifest": 30, "cannot read": 2})
    index, _ = render_index(out)
    open_file(page, index)
    groups = page.locator("#failures-table tbody tr")
    assert groups.count() == 2
    assert groups.first.locator("td.num").inner_text() == "30"
    assert "<slide>: file not found; check the manifest" in groups.first.inner_text()
    assert groups.first.locator(".failed-id").count() == 5
    assert groups.first.locator("details li").count() == 30 and groups.first.locator("details li").first.is_hidden()
    assert "(label tumor)" in groups.first.inner_text()  # the class name, not 1
    visible = page.locator("#slides-table tbody tr:visible")
    assert visible.count() == PAGE_ROWS and page.locator("#pager").is_visible()
    assert page.inner_text("#page-status") == f"slides 1 to {PAGE_ROWS} of 450 (page 1 of 3)"
    assert page.locator("#page-previous").is_disabled()
    page.locator("#page-next").focus()
    page.keyboard.press("Enter")
    assert page.inner_text("#page-status") == f"slides {PAGE_ROWS + 1} to {2 * PAGE_ROWS} of 450 (page 2 of 3)"
    assert visible.first.locator("td[data-col=slide] a").first.inner_text() == f"clone {PAGE_ROWS:05d}"
    page.check("#needs-review")  # the filter runs over every page and starts again at the first
    assert page.inner_text("#page-status") == "slides 1 to 200 of 225 (page 1 of 2)"
    page.fill("#find-slide", "clone 0044")  # 00440 .. 00449, of which the even ones are REVIEW
    assert visible.count() == 5 and page.locator("#pager").is_hidden()
    assert violations(page) == []


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
