"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium, for the
explorer's browser tests. Offline: the driver binary is given, so selenium never tries to
download one, and Chromium's own background traffic is switched off."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def available() -> bool:
    return find(CHROMIUM) is not None and find(DRIVER) is not None


@contextmanager
def chromium(width: int = 1280, height: int = 900, flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile directory) with browser console logging on;
    `flags`: more command-line switches (e.g. --host-resolver-rules to give local servers names)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find(CHROMIUM), find(DRIVER)
    if binary is None or driver_path is None:
        raise RuntimeError("chromium and chromium-driver are not installed (`make install` installs them)")
    profile = Path(tempfile.mkdtemp(prefix="allmende-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, *flags, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """Messages at level SEVERE in the browser console since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
