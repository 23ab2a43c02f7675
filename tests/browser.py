"""Open a report in headless Chromium (the system's /usr/bin/chromium, driven by Playwright) with the network off,
and tell what happened: requests that left the page, scripts that ran, fonts that drew a node's text.

Chromium comes from the system's packages (`apt-get install chromium`, which `.ci/run` does); without it the
browser tests are skipped with that instruction.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium (.ci/run installs it)")
    return path


class Visit:
    def __init__(self, page, requests: list[str], errors: list[str]):
        self.page, self.requests, self.errors = page, requests, errors

    @property
    def remote_requests(self) -> list[str]:
        """Requests for anything but the page itself and what it holds inline (data: and blob: URLs)."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "blob:"))]

    def fonts_of(self, selector: str) -> list[dict]:
        """The fonts Chromium drew the first node matching `selector` with: [{familyName, isCustomFont,
        glyphCount}] (the DevTools protocol's CSS.getPlatformFontsForNode)."""
        session = self.page.context.new_cdp_session(self.page)
        session.send("DOM.enable")
        session.send("CSS.enable")
        root = session.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        node = session.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"no node matches {selector}"
        return session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]


@contextmanager
def visit(path: Path, wait_ms: int = 1500, viewport: tuple[int, int] = (1400, 1000)):
    """The page at `path` opened offline in a `viewport` (width, height) window; yields a Visit once its scripts
    had `wait_ms` to run."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": viewport[0], "height": viewport[1]})
            requests: list[str] = []
            errors: list[str] = []
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.resolve().as_uri())
            page.wait_for_timeout(wait_ms)
            page.evaluate("document.fonts.ready.then(() => true)")  # web fonts decoded before anything is measured
            yield Visit(page, requests, errors)
        finally:
            browser.close()


def first_screen(report: Path, image: Path, viewport: tuple[int, int] = (1300, 900)) -> Path:
    """A PNG of what `report` shows before any scrolling (the docs' screenshots are taken this way)."""
    with visit(report, viewport=viewport) as seen:
        image.parent.mkdir(parents=True, exist_ok=True)
        seen.page.screenshot(path=str(image))
    return image


if __name__ == "__main__":
    # .venv/bin/python tests/browser.py outputs/demo/reports/score.no-input.html docs/screenshots/score-first-screen.png
    import sys

    print(first_screen(Path(sys.argv[1]), Path(sys.argv[2])))
