"""The Customer Origin page in Debian's chromium: a customer created through the form is
served by the edge; bad input shows inline errors; Validate shows per-server results.

Set CDNCTL_SCREENSHOT=docs/control.png to keep the screenshot it takes.
"""
from __future__ import annotations

import os
import time

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser import chromium
from tests.conftest import ROOT
from tests.control.fleet import Origin, start_ctl, start_edge


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def fresh(fn):
    """The page re-renders every 2 s; retry reads that raced a re-render."""
    for _ in range(40):
        try:
            return fn()
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.05)
    return fn()


def status_of(driver, directory: str) -> str:
    def read():
        badges = driver.find_elements(By.CSS_SELECTOR,
                                      f'tr[data-directory="{directory}"] .badge')
        return badges[0].get_attribute("data-status") if badges else ""
    return fresh(read)


def fill(driver, name: str, value: str) -> None:
    field = driver.find_element(By.NAME, name)
    field.clear()
    field.send_keys(value)


def test_a_customer_created_through_the_form_is_served(etcd, tmp_path, browser, monkeypatch):
    origin = Origin("one")
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "edge-tok")    # the edges' and cdnctl's
    ctl = start_ctl(tmp_path, etcd.url)
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    wait = WebDriverWait(browser, 15, poll_frequency=0.1)
    try:
        browser.get(ctl.base + "/")
        token = browser.find_element(By.ID, "token")
        token.send_keys("admin-secret\n")
        wait.until(lambda d: "config revision" in d.find_element(By.ID, "revision").text)
        wait.until(lambda d: fresh(lambda: "edge-a" in d.find_element(By.ID, "edges").text))

        # bad input: the errors appear next to their fields, nothing is stored
        fill(browser, "directory", "images")
        fill(browser, "http", f"http://{origin.address}")
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".error"))
        errors = browser.find_elements(By.CSS_SELECTOR, ".error")
        error = next(e for e in errors if "no scheme" in e.text)
        assert error.find_element(By.XPATH, "preceding-sibling::label[1]//input").get_attribute(
            "name") == "http"
        assert "/cdn/config/customers/images" not in etcd.dump()

        fill(browser, "http", origin.address)
        fill(browser, "cnames", "img.example.com")
        Select(browser.find_element(By.NAME, "balancing")).select_by_value("failover")
        fill(browser, "validation_path", "/check.png")
        browser.find_element(By.ID, "validate").click()
        verdict = wait.until(lambda d: d.find_elements(By.ID, "validation-verdict"))[0]
        assert "200 OK from every edge" in verdict.text
        assert "edge-a" in browser.find_element(By.ID, "validation-results").text
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: status_of(d, "images") == "deployed")
        assert edge.get("/a.png", "img.example.com") == (200, "one /a.png")
        row = fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-directory="images"]').text)
        # no nameserver is registered in this test: only the edge counts (docs/control.md)
        assert "deployed (edges 1/1, nameservers 0/0)" in row, row
        assert "img.example.com → CNAME img.example.com.cdn.example.net" in row, row
        if os.environ.get("CDNCTL_SCREENSHOT"):
            browser.save_screenshot(str(ROOT / os.environ["CDNCTL_SCREENSHOT"]))

        # modify through the form: a second server, the edge follows
        fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-directory="images"] button[data-action="edit"]').click())
        wait.until(lambda d: d.find_element(By.ID, "save").text == "Update")
        Select(browser.find_element(By.NAME, "ip_version")).select_by_value("v4_only")
        Select(browser.find_element(By.NAME, "https_mode")).select_by_value("auto")
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: "Updated images" in d.find_element(By.ID, "msg").text)
        card = ctl.call("GET", "/api/customers/images")[1]
        assert card["customer"]["origin"]["ip_version"] == "v4_only"
        assert card["customer"]["origin"]["balancing"] == "failover"
        assert card["customer"]["https"] == "auto"
        # this cdnctl has no ACME CA: the HTTPS column says so, with the reason
        def cert_cell(d):
            found = d.find_elements(By.CSS_SELECTOR, 'tr[data-directory="images"] [data-cert]')
            return found[0].get_attribute("data-cert") if found else ""
        wait.until(lambda d: fresh(lambda: cert_cell(d)) == "failed")
        row = fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-directory="images"]').text)
        assert "no ACME CA is configured" in row, row
        fresh(lambda: browser.find_element(
            By.CSS_SELECTOR, 'tr[data-directory="images"] button[data-action="renew"]').click())
        wait.until(lambda d: "on its way" in d.find_element(By.ID, "msg").text)
    finally:
        edge.stop()
        ctl.stop()
        origin.close()
