"""Helpers for the tests in a real browser: headless Debian chromium through selenium (the `browser` fixture
is imported by the test modules that use it), logging in, starting a run from the Runbooks page, reading the run page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serverkit import wait_for

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("SSHEXEC_TEST_SCREENSHOTS", "/tmp/sshexec-screenshots"))



@pytest.fixture
def browser(tmp_path):
    # Missing, the suite fails here, never skips: scripts/bootstrap (which ./scripts/test runs first) installs them.
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    assert not missing, f"{' and '.join(missing)} missing: run ./scripts/bootstrap (it installs chromium and chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # explicit paths: offline, selenium must not try to download a driver
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-gpu", "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def log_in(browser, server, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: browser.current_url.rstrip("/") == server.url, "the runs page after login")


def start_from_runbooks_page(browser, server, name: str, **values) -> str:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/runbooks")
    form = browser.find_element(By.CSS_SELECTOR, f'form[data-runbook="{name}"]')
    for key, value in values.items():
        field = form.find_element(By.NAME, key)
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/runs/" in browser.current_url, "the run page")
    return browser.current_url.rsplit("/", 1)[1]


def texts(browser, css: str) -> list[str]:
    """The text of every element matching `css`, read in one go: the page replaces rows as it refreshes."""
    return browser.execute_script("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", css)


def log_lines(browser) -> list[str]:
    return texts(browser, "#log .line")


def status(browser) -> str:
    return "".join(texts(browser, "#run-status"))


def ended(browser) -> str:
    """The run's status once its page has shown the end (log closed, steps and artifacts final)."""
    return browser.execute_script("return document.body.dataset.ended === '1' ? document.body.dataset.status : ''")
