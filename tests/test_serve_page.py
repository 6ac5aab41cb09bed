"""The page of ``glueloc serve`` in a real headless browser: upload a photo, see the estimate.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without
them the test is skipped on a developer's machine and fails under CI, where it must run.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from glueloc.serve import ServeOptions, create_app
from glueloc.storage.layout import Layout
from glueloc.synthetic import SyntheticDataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def service(indexed: Path):  # type: ignore[no-untyped-def]
    """The service on a free loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Layout.at(indexed), ServeOptions(token="t0ken")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture()
def browser():  # type: ignore[no-untyped-def]
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium and chromium-driver")
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_the_estimate_of_an_uploaded_photo(service: str, browser, scene: SyntheticDataset,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    photo = sorted(scene.queries_dir.glob("*.jpg"))[0]
    browser.get(f"{service}/#token=t0ken")
    WebDriverWait(browser, 60).until(lambda b: "24 images" in b.find_element(By.ID, "db").text)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    estimate = WebDriverWait(browser, 120).until(seen.presence_of_element_located((By.ID, "estimate")))
    assert estimate.text.startswith("x = ") and ", y = " in estimate.text
    assert 0.0 <= float(browser.find_element(By.ID, "confidence").text) <= 1.0
    rows = browser.find_elements(By.CSS_SELECTOR, "#neighbours tr")
    assert len(rows) > 1  # a header and the verified neighbours
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "match").is_displayed())
    assert browser.find_element(By.ID, "error").text == ""
    browser.save_screenshot(str(tmp_path / "page.png"))  # for a person to look at when it fails
