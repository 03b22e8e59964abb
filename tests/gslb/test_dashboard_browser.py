"""The dashboard in a real headless browser (Debian's chromium + chromium-driver).

Set GSLB_SCREENSHOT=docs/dashboard.png to keep the screenshot it takes.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import chromium
from tests.conftest import ROOT
from tests.gslb.test_health_live import frankfurt, wait_all_up, wait_for


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

    # Drain the Frankfurt site with its button: a token is needed first, and a right one.
    drain = 'tr[data-site="fra"] button[data-action="drain"]'
    assert "admin token" in browser.find_element(By.CSS_SELECTOR, drain).get_attribute("title")
    click(browser, drain)
    wait.until(lambda d: "need the admin token" in text_of(d, By.ID, "msg"))
    browser.find_element(By.ID, "token").send_keys("nope")
    click(browser, drain)
    wait.until(lambda d: "401" in text_of(d, By.ID, "msg"))
    browser.find_element(By.ID, "token").clear()
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


UTC = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


def cell(driver, row: str, css: str) -> str:
    return text_of(driver, By.CSS_SELECTOR, f"{row} {css}")


def test_dashboard_tells_operators_what_they_need(start_server, edges, browser):
    """Each site's overall state; where an address is probed; no latency for a failed
    check and a short reason; UTC times; after `clear`, a fresh reason and time."""
    srv = start_server(edges.config(token="tok"), workers=1)
    wait_all_up(srv)
    browser.get(srv.http + "/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda d: state_of(d, "127.0.0.12") == "up")
    fra = 'tr[data-site="fra"]'
    wait.until(lambda d: cell(d, fra, ".overall").split() == ["up", "2", "of", "2", "usable"])
    v6 = 'tr[data-address="2001:db8:ed9e::12"]'
    assert cell(browser, v6, ".probed") == f"probed at [::1]:{edges.v6_ports['fra']}"
    assert "probed" not in cell(browser, 'tr[data-address="127.0.0.12"]', "td")
    assert UTC.search(text_of(browser, By.ID, "updated"))
    assert "times in UTC" in text_of(browser, By.TAG_NAME, "header")

    edges.kill("fra")
    ip = 'tr[data-address="127.0.0.12"]'
    wait.until(lambda d: cell(d, ip, ".last") == "fail: connection refused")
    assert cell(browser, ip, ".latency") == ""                     # no latency for a failure
    wait.until(lambda d: cell(d, fra, ".overall").split()[:2] == ["down", "0"])
    edges.start("fra")
    wait.until(lambda d: state_of(d, "127.0.0.12") == "up")
    assert UTC.fullmatch(cell(browser, "#history tr", ".when").split(" (")[0])

    # Force an address down and clear it: it is up again since now, and says why.
    browser.find_element(By.ID, "token").send_keys("tok")
    nyc = 'tr[data-address="127.0.0.11"]'
    wait.until(lambda d: int(cell(d, nyc, ".since").split()[0]) >= 2)   # up for a while
    click(browser, f'{nyc} button[data-action="force-down"]')
    wait.until(lambda d: state_of(d, "127.0.0.11") == "down")
    wait.until(lambda d: cell(d, 'tr[data-site="nyc"]', ".overall").split()[0] == "degraded")
    click(browser, f'{nyc} button[data-action="clear"]')
    wait.until(lambda d: state_of(d, "127.0.0.11") == "up")
    assert cell(browser, nyc, ".reason").startswith("override cleared; the checks say up")
    assert cell(browser, nyc, ".since") in ("0 s", "1 s", "2 s")


def test_buttons_say_when_admin_actions_are_disabled(demo_server, browser):
    browser.get(demo_server.http + "/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda d: "disabled on this server" in text_of(d, By.ID, "admin"))
    button = browser.find_element(By.CSS_SELECTOR, 'tr[data-site="fra"] button')
    assert not button.is_enabled() and "disabled" in button.get_attribute("title")
