"""The web page at ``/`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium), against a real ``srserve serve`` with API keys on: the key field appears
with the server's 401 detail; with the key, a Set5 image (a generated PNG without the data sets)
goes through the jobs API, and the result ``<img>`` is the scale times the input and equals
``/upscale``'s output; an invalid file shows the server's JSON error in ``#error``. A screenshot
of the finished page is saved under the test's tmp dir (and ``test-artifacts/`` when CI=true).

Missing Chromium skips locally and fails under CI=true (``browser`` marker).

    python tests/test_web_page.py --repository model_repository --model edsr --scale 4 \\
        --image ../shared/datasets/benchmark/Set5/x4/LR/img_003.png --screenshot docs/web-page.png
retakes the README's screenshot against a running server (``--base``, default :8000)."""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from conftest import BENCHMARK, ROOT
from server_process import ServerProcess
from service_fixtures import image_bytes, make_repository, max_diff

KEY = "web-test-key"
SET5_IMAGE = BENCHMARK / "Set5" / "x4" / "LR" / "img_003.png"  # 64x64
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1200,1000"]


def browser_binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def start_browser(profile: Path):
    """Headless Chromium with a fresh profile; Selenium is given both binaries so it never
    tries to download a driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binaries = browser_binaries()
    if binaries is None:
        message = "chromium + chromium-driver not installed (apt-get install chromium chromium-driver; " \
                  "docker/ci-tools.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binaries[0]
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=binaries[1]))


def wait_for(driver, condition, what: str, timeout_s: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: condition(d), f"waiting for {what}")


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def upscale_in_page(driver, image: Path, model: str, scale: int, key: str | None = None,
                    preselected: str | None = None) -> None:
    """Fills the form like a user and waits until the result is shown (or an error);
    ``preselected``: the model the page must have chosen by itself before the user picks one."""
    from selenium.webdriver.support.ui import Select

    if key is not None:
        wait_for(driver, lambda d: by_id(d, "key-field").is_displayed(), "the API-key field")
        by_id(driver, "apikey").send_keys(key)
        by_id(driver, "model").click()  # leaving the field fires its change event: models load
    wait_for(driver, lambda d: any(o.get_attribute("value") == model
                                   for o in Select(by_id(d, "model")).options), "the models")
    if preselected is not None:
        chosen = Select(by_id(driver, "model")).first_selected_option
        assert chosen.get_attribute("value") == preselected, chosen.text
    Select(by_id(driver, "model")).select_by_value(model)
    Select(by_id(driver, "scale")).select_by_value(str(scale))
    by_id(driver, "file").send_keys(str(image))
    by_id(driver, "upscale").click()
    wait_for(driver, lambda d: by_id(d, "error").is_displayed() or (
        by_id(d, "output").is_displayed() and d.execute_script("return document.getElementById('result').complete"
                                                               " && document.getElementById('result').naturalWidth")),
        "the result")


def result_bytes(driver) -> bytes:
    """The bytes behind ``#result`` (its blob URL, read inside the page)."""
    encoded = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('result').src).then((r) => r.arrayBuffer()).then((buf) => {
            let s = ''; new Uint8Array(buf).forEach((b) => { s += String.fromCharCode(b); }); done(btoa(s));
        });""")
    return base64.b64decode(encoded)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    repo = make_repository(tmp / "repo")
    mdsr = repo / "mdsr" / "model.json"  # one model trained for real-world photos: the page picks it first
    mdsr.write_text(json.dumps({**json.loads(mdsr.read_text()), "trained_for": "real-world"}))
    process = ServerProcess(repo, tmp / "server.log",
                            {"SR_MODELS": "edsr,mdsr", "SR_API_KEYS": KEY}).start()
    yield process
    process.kill()


@pytest.fixture
def driver(tmp_path):
    browser = start_browser(tmp_path / "profile")
    yield browser
    browser.quit()


def input_image(tmp_path: Path) -> Path:
    if SET5_IMAGE.is_file():
        return SET5_IMAGE
    path = tmp_path / "generated.png"  # no ../shared data sets: a generated photo-like PNG
    path.write_bytes(image_bytes(64, 64, seed=2))
    return path


def save_screenshot(driver, tmp_path: Path) -> Path:
    shot = tmp_path / "web-page.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("CI") == "true":
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(shot, artifacts / "web-page.png")
    return shot


@pytest.mark.browser
def test_web_page_upscales_through_jobs_and_shows_errors(server, driver, tmp_path):
    from PIL import Image

    image = input_image(tmp_path)
    width, height = Image.open(image).size
    driver.get(server.base + "/")
    wait_for(driver, lambda d: by_id(d, "error").is_displayed(), "the 401 without a key")
    assert by_id(driver, "error").text.startswith("unauthorized: ")
    upscale_in_page(driver, image, "edsr", 2, key=KEY, preselected="mdsr")
    assert not by_id(driver, "error").is_displayed(), by_id(driver, "error").text

    natural = driver.execute_script("const r = document.getElementById('result');"
                                    "return [r.naturalWidth, r.naturalHeight];")
    assert natural == [2 * width, 2 * height]
    shown = result_bytes(driver)
    sync = httpx.post(f"{server.base}/upscale?model=edsr&scale=2", content=image.read_bytes(),
                      headers={"Content-Type": "image/png", "X-API-Key": KEY}, timeout=120)
    assert sync.status_code == 200 and max_diff(shown, sync.content) <= 1
    assert float(by_id(driver, "progress").get_attribute("value")) == 1.0
    download = by_id(driver, "download")
    assert download.get_attribute("href") == by_id(driver, "result").get_attribute("src")
    assert download.get_attribute("download") == f"{image.stem}_x2.png"
    assert f"{2 * width}×{2 * height}" in by_id(driver, "info").text
    assert save_screenshot(driver, tmp_path).stat().st_size > 10_000

    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    by_id(driver, "file").send_keys(str(bad))
    by_id(driver, "upscale").click()
    wait_for(driver, lambda d: by_id(d, "error").is_displayed(), "the error")
    assert by_id(driver, "error").text.startswith("bad_image: cannot decode image")


def main() -> None:
    """Retakes the README screenshot against a running server (see the module doc)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--model", default="edsr")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--screenshot", type=Path, required=True)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        browser = start_browser(Path(profile))
        try:
            browser.set_window_size(1100, 1150)  # the whole finished page
            browser.get(args.base + "/")
            upscale_in_page(browser, args.image.resolve(), args.model, args.scale)
            time.sleep(0.5)  # let the comparison settle its layout before the picture
            browser.save_screenshot(str(args.screenshot))
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
