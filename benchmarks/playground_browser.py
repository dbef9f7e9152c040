"""Drive the playground in a real browser: a marimo server on loopback and headless Debian Chromium (Selenium).

Used by tests/playground/test_browser.py and benchmarks/playground_latency.py. marimo's UI elements live in shadow
roots, so every query here walks them (DEEP_QUERY). The server and its files (marimo's ~/.config and
~/.cache) live in a temporary folder and the server is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "copd_playground.py"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

# every element matching arguments[0], in the document and in every shadow root below it
DEEP_QUERY = """
const found = [];
const walk = (root) => {
  for (const el of root.querySelectorAll('*')) {
    if (el.matches(arguments[0])) found.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
};
walk(document);
return found;
"""
BUSY = "[data-status=running], [data-status=queued]"  # cells marimo is running or about to run


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def marimo_server(folder: Path, mode: str = "edit") -> Iterator[str]:
    """`marimo edit` (or `run`) of a copy of the playground in `folder` (an editor saves what it opened, and this
    one must not touch the checkout) on a free loopback port; yields its URL, then stops it by its PID."""
    port = free_port()
    notebook = folder / NOTEBOOK.name
    notebook.write_text(NOTEBOOK.read_text())
    config = folder / "config" / "marimo"
    config.mkdir(parents=True, exist_ok=True)
    (config / "marimo.toml").write_text("[runtime]\nauto_instantiate = true\n")  # as pyproject.toml sets it
    env = {**os.environ, "XDG_CONFIG_HOME": str(folder / "config"), "XDG_CACHE_HOME": str(folder / "cache"),
           "HOME": str(folder), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "marimo", mode, str(notebook), "--headless", "--host", "127.0.0.1", "--port",
               str(port), "--no-token", *(["--skip-update-check"] if mode == "edit" else [])]
    log = open(folder / f"marimo-{mode}.log", "w")
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)  # runs/ lands here
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (folder / f"marimo-{mode}.log").read_text()
                    raise RuntimeError(f"marimo {mode} did not start: {log_text}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 2400):
    """Headless Debian Chromium through its ChromeDriver, with no background network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def deep(driver, css: str) -> list:
    return driver.execute_script(DEEP_QUERY, css)


def wait_for(condition, timeout: float, step: float = 0.05):
    """condition()'s first true value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


def charts(driver) -> list:
    """The rendered altair (vega) charts on the page."""
    return deep(driver, "svg.marks, canvas.marks")


EAGER_CHARTS = 3  # drawn on open: accuracy over training and the two gap panels (the rest render when scrolled to)


def settled(driver) -> bool:
    """Every cell ran (none running or queued) and the charts of the first screens are drawn."""
    return not deep(driver, BUSY) and len(charts(driver)) >= EAGER_CHARTS


# the text of every cell's output area (not the code), shadow roots included (a callout renders in one)
OUTPUTS_TEXT = """
const parts = [];
const text = (node) => {
  parts.push(node.innerText || '');
  for (const el of node.querySelectorAll('*')) {
    if (el.shadowRoot) for (const child of el.shadowRoot.children) text(child);
  }
};
const walk = (root) => {
  for (const el of root.querySelectorAll('*')) {
    if (el.classList.contains('output-area')) text(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  }
};
walk(document);
return parts.join('\\n');
"""


def outputs_text(driver) -> str:
    """The text of every cell's output (not the code): where an error or a refused setting would show."""
    return driver.execute_script(OUTPUTS_TEXT)


def results_row(driver, model: str = "expert:text") -> str:
    """The results table's row of `model`, as the page shows it."""
    lines = driver.execute_script("return document.body.innerText").splitlines()
    return next((line for line in lines if line.startswith(model + "\t")), "")


def slider(driver, label: str):
    """The slider (role=slider, in its shadow root) of the knob labelled `label`."""
    for element in deep(driver, "marimo-slider"):
        if label in (element.get_attribute("data-label") or ""):
            return deep_in(driver, element, "[role=slider]")
    raise LookupError(f"no slider labelled {label!r}")


def deep_in(driver, host, css: str):
    return driver.execute_script("return arguments[0].shadowRoot.querySelector(arguments[1])", host, css)


CLICK_BUTTON = DEEP_QUERY.replace("return found;", """
const button = found.find(b => (b.innerText || '').includes(arguments[1]));
if (button) button.click();
return Boolean(button);""")


def click_button(driver, text: str) -> bool:
    """Click the first button (shadow roots included) whose text contains `text`; whether there was one."""
    return driver.execute_script(CLICK_BUTTON, "button", text)
