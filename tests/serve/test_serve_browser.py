"""The web page in Debian's Chromium (Playwright): upload a query, see the results grid, click to re-query."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fgia.serve.server import serve_subprocess

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def served(real_index) -> Iterator[str]:
    """`python -m fgia.serve` over the real tiny index, on a free loopback port."""
    with serve_subprocess(real_index[0], device="cpu", startup_timeout_s=90) as server:
        yield server.url


def test_upload_shows_results_and_click_requeries(served, real_index, tmp_path):
    _, database = real_index
    index_size = httpx.get(f"{served}/stats").json()["images"]
    query = Path(database.samples[3].path)
    # The page labels hits with the index's class names; a database image finds itself first.
    label_of = {Path(s.path).resolve(): database.classes[s.label] for s in database.samples}
    foreign, problems = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            local = (served, "data:", "blob:")
            page.on("request", lambda r: None if r.url.startswith(local) else foreign.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(served)
            page.set_input_files("#file-input", str(query))
            page.wait_for_selector("#results .result", timeout=15_000)
            grid = page.locator("#results .result")
            assert grid.count() == min(10, index_size)
            top = grid.first
            top_id = int(top.get_attribute("data-id"))
            assert httpx.get(f"{served}/images/{top_id}").content == query.read_bytes()
            assert top.locator(".rank").inner_text() == "#1"
            assert top.locator(".label").inner_text() == label_of[query.resolve()]
            assert top.locator(".distance").inner_text() == "d = 0.000"
            assert page.locator("#query-canvas").evaluate("c => c.width > 0 && c.height > 0")
            assert "predicted category" in page.locator("#query-caption").inner_text()
            page.wait_for_function(
                "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

            second = grid.nth(1)
            next_id, next_label = second.get_attribute("data-id"), second.locator(".label").inner_text()
            second.click()
            page.wait_for_function(f"document.querySelector('#results .result').dataset.id === '{next_id}'")
            assert page.locator("#query-caption").inner_text().startswith(f"database image {next_id}")
            assert page.locator("#results .result .label").first.inner_text() == next_label
            page.screenshot(path=str(tmp_path / "requery.png"), full_page=True)
        finally:
            browser.close()
    assert foreign == [], f"the page fetched external URLs: {foreign}"
    assert problems == []
    assert (tmp_path / "search.png").stat().st_size > 10_000
