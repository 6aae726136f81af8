"""A throwaway JupyterLab server on 127.0.0.1 and headless Debian chromium, for tests and the panel benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(workdir: Path, notebooks: list[str], startup_s: float = 120):
    """Start JupyterLab serving copies of `notebooks` from `workdir`; yields (base url, token); stops it after."""
    for name in notebooks:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", workdir / f"{name}.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    state = workdir / ".jupyter-state"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               IPYTHONDIR=str(state / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={workdir}", f"--LabApp.workspaces_dir={state / 'ws'}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # No "get notified about Jupyter news?" toast over the page (it would cover screenshots).
    labconfig = state / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    log = open(workdir / "jupyterlab.log", "wb")
    server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:  # a readiness poll with a deadline, not a timing window
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}: {(workdir / 'jupyterlab.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {startup_s} s")
            time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    return struct.unpack(">II", data[16:24])


def offline(page) -> list[str]:
    """Let the page load only file: and data: URLs; returns the list of every other URL it tried (and was refused)."""
    fetched: list[str] = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            fetched.append(url)
            route.abort()

    page.route("**/*", only_local)
    return fetched


def open_and_run_all(page, url: str, token: str, notebook: str, timeout_ms: int = 180_000):
    """Open a notebook in JupyterLab, wait for its kernel, run all cells from the Run menu; returns the panel locator."""
    page.goto(f"{url}/lab/tree/{notebook}.ipynb?token={token}", wait_until="domcontentloaded")
    page.locator(".jp-Notebook").first.wait_for(state="visible", timeout=timeout_ms)
    # The status bar reads "Python 3 (ipykernel) | Idle" once the kernel is connected; Run All before that does nothing.
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(state="visible", timeout=timeout_ms)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    panel = page.locator(".torchao-nb-panel").first
    panel.wait_for(state="visible", timeout=timeout_ms)
    return panel


def set_modes(panel, wanted: set[str]) -> None:
    """Click mode buttons until exactly `wanted` are pressed (ipywidgets marks pressed buttons mod-active)."""
    buttons = panel.locator(".torchao-nb-modes button")
    for i in range(buttons.count()):
        b = buttons.nth(i)
        name = b.inner_text().strip()
        pressed = "mod-active" in (b.get_attribute("class") or "")
        if b.is_enabled() and pressed != (name in wanted):
            b.click()
            b.page.wait_for_function("([el, want]) => el.classList.contains('mod-active') === want",
                                     arg=[b.element_handle(), name in wanted])
