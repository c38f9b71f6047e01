"""app.py as a person uses it: a real (headless) Chromium types a prompt, clicks Generate, reads the text.

The command-line mistakes and the seed box's parsing are checked in-process first (fast); the browser tests
are slow and need Chromium and ChromeDriver.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import app
from recipe.sampling import MAX_SEED, SettingError

import pytest
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
no_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium")),
    reason="no Chromium/ChromeDriver/selenium here (apt-get install chromium chromium-driver; pip install -r requirements-dev.txt)",
)


def in_the_browser(test):
    """A slow test that drives Chromium (skipped where it is not installed)."""
    return pytest.mark.slow(no_browser(test))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the command line, in-process ----------------------------------------------------------------

FLAG_MISTAKES = [
    (["--port", "abc"], "argument --port: 'abc' is not a port number"),
    (["--port", "0"], "argument --port: '0' is not a port number"),
    (["--port", "70000"], "argument --port: '70000' is not a port number"),
    (["{missing}"], "no model at"),
    ([], "no model given and none found in runs/*/final"),
]


@pytest.mark.parametrize(
    ("argv", "first_words"), FLAG_MISTAKES, ids=[" ".join(a) or "no model" for a, _ in FLAG_MISTAKES]
)
def test_bad_command_line_is_one_line_and_exit_2(argv, first_words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MODEL_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = [a.format(missing=tmp_path / "nowhere" / "final") for a in argv]
    try:
        code = app.main([*argv, "--port", str(free_port())] if "--port" not in argv else argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {first_words}") and "; " in err, err


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(app, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking the port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main([str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot serve on 127.0.0.1:{port}")


def test_a_bad_port_in_the_environment_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    assert app.main(["some/model"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --port: 'http' is not a port number")


def test_seed_box_blank_is_random_a_number_is_kept_and_text_is_refused():
    drawn = {app.parse_seed(blank) for blank in ["", "  ", None, "", ""]}
    assert len(drawn) > 1 and all(0 <= s <= MAX_SEED for s in drawn)
    assert app.parse_seed(" 1,234 ") == 1234
    with pytest.raises(SettingError, match="must be a whole number or blank for random"):
        app.parse_seed("forty-two")


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def running_app(tiny_run, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), str(tiny_run / "final"), "--port", str(port)],
        cwd=tmp_path_factory.mktemp("app"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, lines = f"http://127.0.0.1:{port}/", []
    watchdog = threading.Timer(120, proc.kill)  # a hang ends the output, and the loop below with it
    watchdog.start()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("serving "):
            break
    watchdog.cancel()
    if not lines or not lines[-1].startswith("serving "):
        proc.kill()
        pytest.fail("app.py did not say it was serving within 120 s:\n" + "".join(lines))
    assert f"on {url[:-1]}; add --share for a public link; Ctrl-C to stop" in lines[-1]
    urllib.request.urlopen(url, timeout=5)  # listening already when the line came
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class Page:
    """The app's page as the tests use it: fill the form, press the buttons, read the results."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.wait = driver, WebDriverWait(driver, 60)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements(self.css, "#prompt textarea"), "the page did not load")

    @property
    def css(self):
        from selenium.webdriver.common.by import By

        return By.CSS_SELECTOR

    def find(self, selector: str):
        return self.driver.find_element(self.css, selector)

    def type_into(self, selector: str, text: str) -> None:
        box = self.find(selector)
        box.clear()
        box.send_keys(text)

    def output(self) -> str:
        return self.find("#output textarea").get_attribute("value")

    def busy(self) -> bool:
        return self.finished_output() is None

    def finished_output(self) -> str | None:
        """The output text once the run has ended (gradio hides the output's status tracker), else None.
        One script, so that the state and the text are read at the same moment."""
        return self.driver.execute_script(
            "const tracker = document.querySelector('#output [data-testid=status-tracker]');"
            "return tracker.classList.contains('hide') ? document.querySelector('#output textarea').value : null;"
        )

    def generate(self) -> str:
        """Press Generate and wait for the finished text (a new one: the old is cleared first)."""
        self.driver.execute_script("document.querySelector('#output textarea').value = ''")
        self.find("#generate").click()
        return self.wait.until(lambda d: self.finished_output(), f"no finished text; output: {self.output()!r}")

    def toasts(self) -> str:
        return " ".join(t.text for t in self.driver.find_elements(self.css, ".toast-wrap"))


@pytest.fixture
def page(running_app, browser):
    return Page(browser, running_app)


@in_the_browser
def test_app_generates_text_in_the_browser(page, tmp_path):
    assert page.find("h1").text == "SmolLM2-135M (step 4)"  # the config's name and the run's step
    assert "Prompt + generated continuation" in page.find("#output").text
    page.type_into("#prompt textarea", "JULIET:")
    text = page.generate()
    assert text.startswith("JULIET:") and len(text.strip()) > len("JULIET:")
    page.driver.save_screenshot(str(tmp_path / "app.png"))


@in_the_browser
def test_blank_seed_gives_fresh_text_and_its_number_gives_it_again(page):
    assert page.find("#seed textarea").get_attribute("value") == ""  # random is the default
    first = page.generate()
    second = page.generate()
    assert first != second
    seed = page.find("#seed-note").text.split()[1].rstrip(":")
    page.type_into("#seed textarea", seed)
    assert page.generate() == second


@in_the_browser
@pytest.mark.parametrize(
    ("box", "value", "message"),
    [
        ("#seed textarea", "-1", "Seed must be between 0 and 4,294,967,295 (got -1)"),
        ("#seed textarea", "forty-two", "Seed must be a whole number or blank for random"),
        ("#prompt textarea", "word " * 8200, "more than the model's context of 8,192 tokens"),
    ],
    ids=["negative seed", "text seed", "prompt too long"],
)
def test_bad_input_shows_a_message_on_the_page(page, box, value, message):
    if len(value) > 100:  # typing 8,200 words takes minutes: set the box as a paste would
        page.driver.execute_script(
            "const box = document.querySelector(arguments[0]); box.value = arguments[1];"
            "box.dispatchEvent(new Event('input', {bubbles: true}));",
            box,
            value,
        )
    else:
        page.type_into(box, value)
    page.find("#generate").click()
    page.wait.until(lambda d: message in page.toasts(), f"no message {message!r}; toasts: {page.toasts()!r}")
    assert not page.driver.find_elements(page.css, "#output .error")  # no bare "Error" badge on the output


@in_the_browser
def test_stop_ends_a_long_generation(page, tokenizer):
    page.type_into("#max-new-tokens input[type=number]", "512")
    page.find("#prompt textarea").click()  # leaves the number box, which commits its value
    page.find("#generate").click()
    page.wait.until(lambda d: len(page.output()) > len("ROMEO:") + 20, "no text arrived")
    page.find("#stop").click()
    page.wait.until(lambda d: not page.busy(), "still generating after Stop")
    stopped = page.output()
    time.sleep(2)
    assert page.output() == stopped  # nothing arrives after Stop
    assert len(tokenizer(stopped)["input_ids"]) < 400  # far from the 512 new tokens asked for
