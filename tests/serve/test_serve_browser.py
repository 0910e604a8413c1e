"""The web page in Debian's Chromium (Playwright): upload a query, see the results grid, click to re-query."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from fgia.serve import ServeConfig, create_app

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"server at {url} did not become healthy within {timeout_s} s")


@pytest.fixture
def served(fake_engine) -> Iterator[str]:
    """The app over the fake engine, served by uvicorn on loopback in a background thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(fake_engine, ServeConfig(thumb_size=96)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout_s=20)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_upload_shows_results_and_click_requeries(served, fake_db, tmp_path):
    paths, labels = fake_db
    query_id, next_id = 4, 1  # a blue image, then a red one clicked from the grid
    foreign, problems = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.on("request", lambda r: None if r.url.startswith((served, "data:", "blob:")) else foreign.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(served)
            page.set_input_files("#file-input", str(paths[query_id]))
            page.wait_for_selector("#results .result", timeout=15_000)
            grid = page.locator("#results .result")
            assert grid.count() == len(paths)
            top = grid.first
            assert top.get_attribute("data-id") == str(query_id)
            assert top.locator(".rank").inner_text() == "#1"
            assert top.locator(".label").inner_text() == labels[query_id]
            assert top.locator(".distance").inner_text() == "d = 0.000"
            assert page.locator("#query-canvas").evaluate("c => c.width > 0 && c.height > 0")
            assert "colours" in page.locator("#query-caption").inner_text()
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

            page.click(f"#results .result[data-id='{next_id}']")
            page.wait_for_function(f"document.querySelector('#results .result').dataset.id === '{next_id}'")
            assert page.locator("#query-caption").inner_text().startswith(f"database image {next_id}")
            assert page.locator("#results .result .label").first.inner_text() == labels[next_id]
            page.screenshot(path=str(tmp_path / "requery.png"), full_page=True)
        finally:
            browser.close()
    assert foreign == [], f"the page fetched external URLs: {foreign}"
    assert problems == []
    assert (tmp_path / "search.png").stat().st_size > 10_000
