"""Headless Chromium for the tests that open a page: reports, the serve page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def chromium_browser(tmp_path: Path):
    """Headless Debian Chromium driven by Selenium (skipped where missing, except in CI)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are needed for the report test; .ci/run installs them")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1300,1200",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def render_report(report: Path, screenshot: Path, tmp_path: Path) -> dict:
    """Open a report in headless Chromium: the state of every image, the console errors, a screenshot."""
    browser = chromium_browser(tmp_path)
    try:
        browser.get(report.resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1300, min(height, 8000))
        browser.save_screenshot(str(screenshot))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        text = browser.find_element("tag name", "body").text
    finally:
        browser.quit()
    return {"images": images, "errors": errors, "text": text}
