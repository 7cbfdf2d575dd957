"""The sampling panel of chapter 06 in a real browser: JupyterLab on a free local port, headless Chromium.

Runs every cell of notebooks/06_sampling.ipynb (a copy, in a scratch folder: autosave never touches the
repository), then checks what only a browser shows: the panel renders as widgets (not "Error displaying
widget", not its text form), moving a knob redraws the chart, Generate streams text, and an unknown
character in the prompt becomes a message. Also: the notebook does not open "dirty".

Needs Debian's chromium and chromedriver (`make browser`) and selenium (requirements-dev.txt); selenium
is pointed at /usr/bin/chromedriver, never at a driver it would download. Skips, saying why, without them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_sampling.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
RUN_ALL_S = 600  # the whole chapter, on a loaded 2-core machine
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1400,1000"]


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "no chromium/chromedriver on PATH: run `make browser` (apt-get install chromium chromium-driver)"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port over a scratch copy of chapter 06; yields its base URL and token."""
    scratch = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, scratch / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(scratch / ".config"), "JUPYTER_RUNTIME_DIR": str(scratch / ".runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
           "--ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={scratch}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.user_settings_dir={scratch / '.settings'}", f"--LabApp.workspaces_dir={scratch / '.ws'}"]
    log = open(scratch / "lab.log", "w")
    server = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"JupyterLab did not start: {(scratch / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, token
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(RUN_ALL_S)
    yield driver
    driver.quit()


def _wait(driver, what, timeout: float = 60):
    # widgets re-render (the chart's <img> is replaced at every redraw): a stale element just means "look again"
    wait = WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(lambda d: what(d))
    except TimeoutException:
        panels = driver.find_elements(By.CSS_SELECTOR, ".widget-vbox")
        shown = panels[0].text if panels else "(no panel)"
        raise AssertionError(f"timed out after {timeout} s; the panel shows:\n{shown[-1500:]}") from None


def _kernel_idle(driver) -> bool:
    return driver.execute_script("""
        const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return !!k && k.status === 'idle' && w.sessionContext.isReady;""")


def _slider(driver, label: str):
    for slider in driver.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        if slider.find_element(By.CSS_SELECTOR, ".widget-label").text.startswith(label):
            return slider
    raise AssertionError(f"no slider labelled {label!r}")


def _type_into_readout(driver, label: str, value: str) -> None:
    """Set a slider the way a reader can without dragging: type into its readout and press Enter."""
    readout = _slider(driver, label).find_element(By.CSS_SELECTOR, ".widget-readout")
    readout.click()
    readout.send_keys(Keys.CONTROL, "a")
    readout.send_keys(value, Keys.ENTER)
    _wait(driver, lambda d: _slider(d, label).find_element(By.CSS_SELECTOR, ".widget-readout").text == value, 30)


def _chart_src(driver) -> str:
    images = driver.find_elements(By.CSS_SELECTOR, ".widget-vbox .jp-OutputArea-output img")
    return images[0].get_attribute("src") if images else ""


def test_panel_works_in_jupyterlab(lab, browser):
    url, token = lab
    driver = browser
    driver.get(f"{url}/lab/tree/{NOTEBOOK.name}?token={token}")
    _wait(driver, _kernel_idle, 120)
    time.sleep(1)  # let the kernel's info reach the notebook model
    dirty, metadata = driver.execute_script("""
        const model = window.jupyterapp.shell.currentWidget.context.model;
        return [model.dirty, JSON.stringify(model.metadata)];""")
    assert not dirty, f"the notebook opened with unsaved changes; its metadata in the browser: {metadata}"

    # clear the stored outputs (and execution counts), run every cell, wait until each has run again
    counts = """return window.jupyterapp.shell.currentWidget.content.widgets
                    .filter(c => c.model.type === 'code').map(c => c.model.executionCount);"""
    driver.execute_script("return window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs');")
    _wait(driver, lambda d: all(n is None for n in d.execute_script(counts)), 30)
    # not awaited: the command's promise resolves only when every cell has run (longer than a webdriver call)
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")
    _wait(driver, lambda d: d.execute_script("""
        const code = window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
        return code.every(c => c.model.executionCount !== null);"""), RUN_ALL_S)
    _wait(driver, _kernel_idle, 60)
    page = driver.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel").text
    assert "Error displaying widget" not in page and "VBox(children" not in page
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-vbox .widget-slider"), 30)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".widget-vbox .widget-slider")) == 5  # the panel's knobs
    for label in ("temperature (0=greedy)", "top-k (0=off)", "repetition penalty"):
        shown = _wait(driver, lambda d: _slider(d, label).find_element(By.CSS_SELECTOR, ".widget-label"), 30)
        assert shown.size["width"] >= shown.get_property("scrollWidth"), f"label {label!r} is cut"

    # move a knob (type into top-k's readout, as a reader can) and see the chart change
    before = _wait(driver, _chart_src, 30)
    assert before.startswith("data:image/png")
    _type_into_readout(driver, "top-k", "3")
    _wait(driver, lambda d: _chart_src(d) not in ("", before), 120)
    _type_into_readout(driver, "max new tokens", "20")  # a short generation: this machine may be busy

    # Generate streams a continuation of a new prompt
    # commit the new prompt first (blur) and wait for its chart and an idle kernel: the panel's layout settles
    # before the click, so a slow kernel's redraw cannot move the button from under it (seen once in CI)
    shown_chart = _chart_src(driver)
    prompt = driver.find_element(By.CSS_SELECTOR, ".widget-vbox textarea")
    prompt.clear()
    prompt.send_keys("JULIET:")
    driver.find_element(By.CSS_SELECTOR, ".widget-vbox .widget-slider .widget-label").click()  # blur: commit
    _wait(driver, lambda d: _chart_src(d) not in ("", shown_chart), 120)
    _wait(driver, _kernel_idle, 60)
    driver.find_element(By.XPATH, "//button[normalize-space()='Generate']").click()
    output = lambda d: d.find_element(By.CSS_SELECTOR, ".widget-vbox .widget-html pre").text  # noqa: E731
    _wait(driver, lambda d: output(d).startswith("JULIET:") and len(output(d)) > len("JULIET:") + 5, 300)
    _wait(driver, lambda d: "20 tokens · prefill " in d.find_element(By.CSS_SELECTOR, ".widget-vbox").text, 300)

    # an unknown character becomes a message in the panel
    prompt = driver.find_element(By.CSS_SELECTOR, ".widget-vbox textarea")
    prompt.send_keys("é")
    driver.find_element(By.CSS_SELECTOR, ".widget-vbox .widget-slider .widget-label").click()  # blur: commit
    _wait(driver, lambda d: "is not in the vocabulary" in d.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel").text, 60)
