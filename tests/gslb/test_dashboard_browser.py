"""The dashboard in a real headless browser (Debian's chromium + chromium-driver).

Set GSLB_SCREENSHOT=docs/dashboard.png to keep the screenshot it takes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chromium
from tests.conftest import ROOT
from tests.gslb.test_health_live import edges, frankfurt, wait_all_up, wait_for  # noqa: F401 (edges: fixture)


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def fresh(fn):
    """The page re-renders every 2 s; retry reads that raced a re-render."""
    for _ in range(20):
        try:
            return fn()
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.05)
    return fn()


def state_of(driver, ip: str) -> str:
    def read():
        cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-address="{ip}"] .badge')
        return cells[0].get_attribute("data-state") if cells else ""
    return fresh(read)


def text_of(driver, by: str, what: str) -> str:
    return fresh(lambda: driver.find_element(by, what).text)


def click(driver, css: str) -> None:
    fresh(lambda: driver.find_element(By.CSS_SELECTOR, css).click())


def test_dashboard_shows_failure_and_drains_a_site(start_server, edges, browser, tmp_path):
    srv = start_server(edges.config(token="tok"), workers=2)
    wait_all_up(srv)
    browser.get(srv.http + "/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda d: state_of(d, "127.0.0.12") == "up")
    assert "fra" in text_of(browser, By.CSS_SELECTOR, "#services tbody")

    edges.kill("fra")                                    # the edge goes down...
    wait.until(lambda d: state_of(d, "127.0.0.12") == "down")   # ...and the page shows it
    assert "fall 3" in text_of(browser, By.CSS_SELECTOR, 'tr[data-address="127.0.0.12"]')
    assert "127.0.0.12" in text_of(browser, By.ID, "history")
    edges.start("fra")
    wait.until(lambda d: state_of(d, "127.0.0.12") == "up")
    wait_for(srv, "127.0.0.12", 3)

    # Drain the Frankfurt site with its button: a token is needed first.
    drain = 'tr[data-site="fra"] button[data-action="drain"]'
    click(browser, drain)
    wait.until(lambda d: "401" in text_of(d, By.ID, "msg"))
    browser.find_element(By.ID, "token").send_keys("tok")
    click(browser, drain)
    wait.until(lambda d: state_of(d, "127.0.0.12") == "drain")
    assert text_of(browser, By.ID, "msg") == ""
    assert "forced" in text_of(browser, By.CSS_SELECTOR, 'tr[data-address="127.0.0.12"] .badge')
    # dig stops returning that site
    wait_for(srv, "127.0.0.11", 3)
    assert {tuple(frankfurt(srv)) for _ in range(10)} == {("127.0.0.11",)}
    # the services view follows: Frankfurt clients now go to nyc
    wait.until(lambda d: "nyc" in text_of(d, By.XPATH, '//table[@id="services"]/tbody/tr/td[4]'))

    time.sleep(0.3)
    shot = Path(os.environ.get("GSLB_SCREENSHOT") or tmp_path / "dashboard.png")
    if not shot.is_absolute():
        shot = ROOT / shot
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
