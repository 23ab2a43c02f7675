"""Open a report in headless Chromium (the system's /usr/bin/chromium, driven by Playwright) with the network off,
and tell what happened: requests that left the page, scripts that ran, fonts that drew a node's text. Or start a
real JupyterLab (`jupyter_lab`) and open it (`browse`), for what a person meets in the notebook itself.

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


class Lab:
    """A JupyterLab server on 127.0.0.1 (`jupyter_lab`): its address and token, and where it logs."""

    def __init__(self, url: str, token: str, root: Path, log: Path):
        self.url, self.token, self.root, self.log = url, token, root, log

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"


@contextmanager
def jupyter_lab(root: Path, env: dict[str, str], timeout_s: float = 90):
    """A real JupyterLab serving `root`, from this environment (its kernel runs this checkout's code), with its
    settings, workspaces and runtime files in a folder of its own and no update or news checks; `env` is added to
    the server's (and so the kernels') environment. The app is exposed as `window.jupyterapp` for tests."""
    import os
    import secrets
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    home = root.parent / f"{root.name}-jupyter"
    home.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    server_env = {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                  "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
                  "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
                  "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    log = home / "server.log"
    command = [str(bin_dir / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield Lab(url, token, root, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def browse(url: str, viewport: dict | None = None):
    """A page of Chromium opened at `url` (a local server); every request to another host is refused and kept in
    `remote_requests`. Yields a Visit."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    origin = url.split("/", 3)[:3]
    origin = "/".join(origin)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
            requests: list[str] = []
            errors: list[str] = []

            def route(route):
                if route.request.url.startswith((origin, "data:", "blob:")):
                    route.continue_()
                else:
                    requests.append(route.request.url)
                    route.abort()

            context.route("**/*", route)
            context.set_default_timeout(60_000)  # a JupyterLab on a busy machine
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
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
