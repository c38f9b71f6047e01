"""app.py as a person uses it: a real (headless) Chromium types a prompt, clicks Generate, reads the text."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements-dev.txt)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="no Chromium/ChromeDriver on this machine (apt-get install chromium chromium-driver; .ci/run does)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running_app(tiny_run, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), str(tiny_run / "final"), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited early:\n{proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app.py did not start listening within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]:  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_app_generates_text_in_the_browser(running_app, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path)
    try:
        driver.get(running_app)
        wait = WebDriverWait(driver, 60)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        assert "run/final (step 4)" in driver.find_element(By.TAG_NAME, "body").text  # model name and step
        prompt.clear()
        prompt.send_keys("JULIET:")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()

        def finished_text(d):
            value = d.find_element(By.CSS_SELECTOR, "#output textarea").get_attribute("value")
            busy = d.find_elements(By.CSS_SELECTOR, ".generating, .pending")
            return value if value and len(value) > len("JULIET:") and not busy else False

        text = wait.until(finished_text)
        assert text.startswith("JULIET:") and len(text.strip()) > len("JULIET:")
        driver.save_screenshot(str(tmp_path / "app.png"))
    finally:
        driver.quit()
