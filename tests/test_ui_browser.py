"""``casreg ui`` in a real browser: the command runs as a subprocess on a free
127.0.0.1 port against a registry built here (tests/ui_registry.py), and the OS's
headless Chromium (Debian's ``chromium`` and ``chromium-driver``; .ci/run installs them)
reads the pages as a user would and clicks through them. Screenshots go into the test's
temporary directory; with ``CASREG_UI_SCREENSHOTS=docs/ui`` they also replace the
screenshots of docs/ui.md::

    CASREG_UI_SCREENSHOTS=docs/ui python -m pytest tests/test_ui_browser.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="casreg ui needs the ui extra (pip install 'casreg[ui]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")

from selenium.webdriver.common.by import By  # noqa: E402
from ui_registry import AUC, ROLLBACK_REASON, Built, build  # noqa: E402

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no headless Chromium here (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    saved = {k: os.environ.get(k) for k in ("CASREG_USER", "GIT_CEILING_DIRECTORIES")}
    try:
        yield build(tmp_path_factory.mktemp("ui-browser"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def server(built: Built) -> Iterator[str]:
    """``casreg ui --port 0`` as a real process; the URL is the one it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "casreg_cli.main", "ui", "-r", built.url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split()[0]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--hide-scrollbars", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: object, tmp_path: Path, name: str) -> None:
    """A full-page screenshot into the test's directory (and docs/ui/ when asked)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
    driver.set_window_size(1280, max(700, min(int(height) + 40, 2400)))  # type: ignore[attr-defined]
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    assert path.stat().st_size > 10_000
    target = os.environ.get("CASREG_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / f"{name}.png")
    driver.set_window_size(1280, 1000)  # type: ignore[attr-defined]


def problems(driver: object) -> list[str]:
    """Console errors (a CSP violation, a missing asset, a script error)."""
    return [e["message"] for e in driver.get_log("browser")  # type: ignore[attr-defined]
            if e["level"] in ("SEVERE", "ERROR") and "favicon" not in e["message"]]


def text(driver: object, css: str = "main") -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)  # type: ignore[attr-defined]


def test_click_through_models_model_version_diff(server: str, browser: object, tmp_path: Path) -> None:
    d = browser
    d.get(server)  # type: ignore[attr-defined]
    assert "production → v3" in text(d) and "staging → v4" in text(d)
    shoot(d, tmp_path, "models")
    d.find_element(By.LINK_TEXT, "fraud").click()  # type: ignore[attr-defined]
    assert d.current_url.endswith("/models/fraud")  # type: ignore[attr-defined]
    pointers = text(d, "#aliases")
    assert "production → fraud:3" in pointers and "staging → fraud:4" in pointers
    assert d.find_element(By.ID, "metric-chart").is_displayed()  # type: ignore[attr-defined]
    assert d.find_element(By.ID, "storage-chart").is_displayed()  # type: ignore[attr-defined]
    assert "dedup saved" in text(d, "#savings")
    rows = d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")  # type: ignore[attr-defined]
    assert [r.text.split()[0] for r in rows] == ["v4", "v3", "v2", "v1"]
    assert "production" in rows[1].text and "archived" in rows[2].text
    shoot(d, tmp_path, "model")
    d.find_element(By.LINK_TEXT, "v3").click()  # type: ignore[attr-defined]
    assert text(d, "h1").startswith("fraud:3") and "production" in text(d, "h1")
    assert "0.947" in text(d, "#metrics")
    assert "1 of 1 required" in text(d, "#approvals")
    assert "v3 fixes the latency" in text(d, "#deployments")
    shoot(d, tmp_path, "version")
    d.find_element(By.PARTIAL_LINK_TEXT, "diff v2 → v3").click()  # type: ignore[attr-defined]
    metrics = text(d, "#diff-metrics")
    assert f"{AUC[3] - AUC[2]:+.6g}" in metrics and "auc" in metrics
    assert "% of fraud:3 is in chunks fraud:2 already has" in text(d, "#diff-shared")
    shoot(d, tmp_path, "diff")
    assert problems(d) == []


def test_history_shows_the_rollback_and_answers_a_time(server: str, browser: object, tmp_path: Path) -> None:
    d = browser
    d.get(server + "models/fraud/history")  # type: ignore[attr-defined]
    rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "table.events tbody tr")]  # type: ignore[attr-defined]
    rollback = [r for r in rows if " rollback " in f" {r} "]
    assert len(rollback) == 1 and ROLLBACK_REASON in rollback[0] and "fraud:2" in rollback[0]
    assert d.find_element(By.ID, "timeline").is_displayed()  # type: ignore[attr-defined]
    shoot(d, tmp_path, "history")
    # click the far right end of the timeline (now): production is at v3
    svg = d.find_element(By.ID, "timeline")  # type: ignore[attr-defined]
    from selenium.webdriver.common.action_chains import ActionChains

    size = svg.size
    ActionChains(d).move_to_element_with_offset(svg, size["width"] // 2 - 4, -size["height"] // 2 + 3).click().perform()
    deadline = time.monotonic() + 10
    while "at=" not in d.current_url and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    answer = text(d, "#at-answer")
    assert "fraud@production pointed at fraud:3" in answer, answer
    assert problems(d) == []


def test_policy_and_errors(server: str, browser: object, tmp_path: Path) -> None:
    d = browser
    d.get(server + "policy")  # type: ignore[attr-defined]
    assert "approvals = 1" in text(d, "#policy-text")
    shoot(d, tmp_path, "policy")
    d.get(server + "models/no-such-model")  # type: ignore[attr-defined]
    assert "model 'no-such-model' has no versions" in text(d, "#error-message")
    assert text(d, "h1") == "404"
    d.get(server + "models/fraud/versions/2")  # type: ignore[attr-defined]
    shown = text(d, "#description")
    assert shown.startswith("<script>alert(1)</script>\\x1b[2J\\u202e evil\\nsecond line")
    # shown as text, not run (a script that ran alert() would fail the next command with an alert open)
    assert d.find_elements(By.CSS_SELECTOR, "main script, main img") == []  # type: ignore[attr-defined]
    assert "onerror=alert(2)>" in text(d, "main")


@pytest.fixture(scope="module")
def write_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``casreg ui --allow-writes`` over a registry of its own (the other tests' stays as
    built), run by carol@example.com."""
    saved = {k: os.environ.get(k) for k in ("CASREG_USER", "GIT_CEILING_DIRECTORIES")}
    try:
        built = build(tmp_path_factory.mktemp("ui-browser-writes"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    env = {**os.environ, "CASREG_USER": "carol@example.com"}
    proc = subprocess.Popen([sys.executable, "-m", "casreg_cli.main", "ui", "-r", built.url, "--port", "0",
                             "--allow-writes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "writes allowed, as carol@example.com" in line, (line, proc.stderr.read() if proc.poll() else "")
        yield line.split(" at ", 1)[1].split()[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_approve_then_promote_in_the_browser(write_server: str, browser: object, tmp_path: Path) -> None:
    """Click approve, then promote, on the version page: the new stage's badge shows."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d = browser
    # a click navigates: an element of the page before can go stale between finding it and
    # reading it, which only means the next page is not there yet (wait on)
    wait = WebDriverWait(d, 15, ignored_exceptions=(StaleElementReferenceException,))  # type: ignore[arg-type]
    problems(d)  # drain what earlier tests left in the console log (their 404 pages)
    d.get(write_server + "models/fraud/versions/4")  # type: ignore[attr-defined]
    assert "production" not in text(d, "h1") and "0 of 1 required" in text(d, "#approvals")
    form = d.find_element(By.ID, "form-decide")  # type: ignore[attr-defined]
    Select(form.find_element(By.NAME, "stage")).select_by_visible_text("production")
    form.find_element(By.NAME, "reason").send_keys("reviewed the eval report")
    d.find_element(By.ID, "approve").click()  # type: ignore[attr-defined]
    wait.until(lambda drv: drv.find_elements(By.ID, "flash"))
    assert "approve production fraud:4 by carol@example.com" in text(d, "#flash")
    assert "1 of 1 required" in text(d, "#approvals")
    form = d.find_element(By.ID, "form-promote")  # type: ignore[attr-defined]
    Select(form.find_element(By.NAME, "stage")).select_by_visible_text("production")
    form.find_element(By.NAME, "reason").send_keys("v4 beats v3 on auc")
    d.find_element(By.ID, "promote").click()  # type: ignore[attr-defined]
    wait.until(lambda drv: "promote" in drv.find_element(By.ID, "flash").text)
    assert "production" in text(d, "h1") and "staging" in text(d, "h1")
    assert d.find_elements(By.CSS_SELECTOR, "h1 .badge-production")  # type: ignore[attr-defined]
    assert "v4 beats v3 on auc" in text(d, "#deployments")
    shoot(d, tmp_path, "version-actions")
    assert problems(d) == []
