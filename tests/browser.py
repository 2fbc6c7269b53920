"""Headless Chromium for the tests that look at the pages a reviewer opens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Debian's chromium offline, as root: no sandbox, no background network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def chromium(profile: Path, width: int = 1300, height: int = 1000) -> Iterator:
    """A selenium driver of headless Chromium with its profile under ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()


def loaded_width(driver, image) -> int:
    """The decoded width of an <img> (0 when it did not load)."""
    return driver.execute_script("return arguments[0].naturalWidth", image)
