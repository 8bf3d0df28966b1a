"""The admin page in real headless Chromium (Debian's chromium + chromium-driver, via selenium),
served by amq under gunicorn in front of the fake Q and its OIDC service.

The tests run in order on one server and one browser, as an operator would: a wrong key, the
login, the accounts, CSRF, a device login, disable/enable, remove, the chart, logout. Every page
and JSON answer seen is kept and checked for secrets at the end. Screenshots at 1280 and 390 px
go to tests/screenshots/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import pytest
import requests

from amq.credentials.store import FileStore
from tests.admin_support import ADMIN_KEY, admin_settings, secrets_of, store_login
from tests.fakeq import FakeQ
from tests.support import ROOT, running_amq

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "tests" / "screenshots"
WIDTHS = (1280, 390)
SEEN: list[tuple[str, str]] = []  # (what, text) of every page and JSON answer the tests saw


def _binaries() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        reason = f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the browser tests")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def fake():
    with FakeQ() as fake:
        yield fake


@pytest.fixture(scope="module")
def site(fake, tmp_path_factory):
    """amq under gunicorn with two stored logins and /admin open; (server, store)."""
    directory = tmp_path_factory.mktemp("admin")
    store = FileStore(str(directory / "token.json"))
    store_login(fake, store, "default")
    store_login(fake, store, "beta")
    with running_amq(fake, directory, **admin_settings(PROXY_API_KEYS="sk-test")) as server:
        yield server, store


@pytest.fixture(scope="module")
def browser():
    _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="amq-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:  # noqa: BLE001 - the page may be between loads
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def keep(driver, what: str) -> str:
    SEEN.append((what, driver.page_source))
    return driver.page_source


def screenshot(driver, name: str) -> None:
    """The whole page at each width (the window grows to the page's height)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        driver.set_window_size(width, 900)
        time.sleep(0.2)
        height = driver.execute_script("return document.documentElement.scrollHeight"
                                       " + window.outerHeight - window.innerHeight")
        driver.set_window_size(width, max(600, min(height, 4000)))
        time.sleep(0.2)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}-{width}.png"))
    driver.set_window_size(1280, 900)


def click(driver, selector: str) -> None:
    """Click `selector`, again if the page's refresh redrew it meanwhile (a stale element)."""
    def attempt() -> bool:
        css(driver, selector).click()
        return True
    wait_for(attempt, what=f"a click on {selector}")


def row_states(driver) -> dict[str, str]:
    """Account name -> state as the table shows it (read again if the refresh redrew it)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return {row.get_attribute("data-account"): css(row, ".state").text
                    for row in css_all(driver, "#account-rows tr[data-account]")}
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError("the accounts table kept being redrawn")


def session_cookies(driver) -> dict:
    return {cookie["name"]: cookie["value"] for cookie in driver.get_cookies()}


def api_accounts(driver, site) -> dict:
    server, _ = site
    answer = requests.get(server.url + "/admin/api/accounts", cookies=session_cookies(driver), timeout=5)
    assert answer.status_code == 200
    SEEN.append(("GET /admin/api/accounts", answer.text))
    return answer.json()


def log_in(driver, site, key: str) -> None:
    server, _ = site
    driver.get(server.url + "/admin/login")
    css(driver, "#key").send_keys(key)
    css(driver, "#login-form button").click()


def test_wrong_key_is_refused(browser, site):
    server, _ = site
    browser.get(server.url + "/admin/")
    assert browser.current_url.endswith("/admin/login")  # the page needs the session
    log_in(browser, site, "not-" + ADMIN_KEY)
    error = wait_for(lambda: css(browser, "#login-error"), what="the error")
    assert "Wrong key" in error.text
    keep(browser, "login page after a wrong key")
    screenshot(browser, "login-wrong-key")
    browser.get(server.url + "/admin/")
    assert browser.current_url.endswith("/admin/login")


def test_login_with_the_key_lists_the_accounts(browser, site):
    server, store = site
    time.sleep(1.1)  # the slowdown after the wrong key
    log_in(browser, site, ADMIN_KEY)
    wait_for(lambda: browser.current_url.endswith("/admin/"), what="the accounts page")
    assert row_states(browser) == {"default": "active", "beta": "active"}
    wait_for(lambda: "Updated" in css(browser, "#updated").text, what="the JSON refresh")
    assert row_states(browser) == {"default": "active", "beta": "active"}  # as redrawn by the script
    expiry = css(browser, 'tr[data-account="beta"] td[data-label="Token expires"]').text
    assert expiry.startswith(time.strftime("%Y-", time.localtime(store.load("beta")["expiresAt"])))
    cookie = next(c for c in browser.get_cookies() if c["name"] == "amq_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    keep(browser, "accounts page")
    screenshot(browser, "accounts")


def test_chart_is_drawn_for_the_last_hour(browser, site):
    lines = css_all(browser, "#chart polyline")
    assert [line.get_attribute("data-series") for line in lines] == ["requests", "errors"]
    for line in lines:
        assert len(line.get_attribute("points").split()) == 60


def test_post_without_csrf_token_is_refused(browser, site):
    server, _ = site
    browser.execute_script("""
        var form = document.querySelector('tr[data-account="beta"] form[action$="/disable"]');
        form.querySelector('input[name="csrf_token"]').remove();
        form.submit();""")
    refused = wait_for(lambda: css(browser, "#refused"), what="the refusal")
    assert "CSRF token" in refused.text
    keep(browser, "CSRF refusal")
    answer = requests.post(server.url + "/admin/accounts/beta/disable", cookies=session_cookies(browser),
                           timeout=5)
    assert answer.status_code == 403
    assert {row["name"]: row["state"] for row in api_accounts(browser, site)["accounts"]}["beta"] == "active"


def test_add_an_account_through_the_device_flow(browser, site, fake):
    server, store = site
    browser.get(server.url + "/admin/")
    css(browser, "#account").send_keys("gamma")
    css(browser, "#add-button").click()
    code = wait_for(lambda: css(browser, "#user-code").text, what="the user code")
    assert css(browser, "#verify-url").get_attribute("href").startswith(fake.url)
    keep(browser, "device login page")
    screenshot(browser, "device-login")
    fake.approve(code)
    wait_for(lambda: browser.current_url.endswith("/admin/"), timeout=15, what="the page to move on")
    wait_for(lambda: "gamma" in row_states(browser), what="the new account's row")
    assert "gamma" in store.accounts() and fake.refresh_token_valid(store.load("gamma")["refreshToken"])
    keep(browser, "accounts page with the new account")


def test_disable_and_enable(browser, site):
    click(browser, 'tr[data-account="beta"] form[action$="/disable"] button')
    wait_for(lambda: row_states(browser).get("beta") == "disabled", what="beta disabled")
    assert "disabled" in css(browser, ".flash.ok").text
    assert {row["name"]: row["state"] for row in api_accounts(browser, site)["accounts"]}["beta"] == "disabled"
    keep(browser, "accounts page with a disabled account")
    click(browser, 'tr[data-account="beta"] form[action$="/enable"] button')
    wait_for(lambda: row_states(browser).get("beta") == "active", what="beta enabled")


def _message(server) -> requests.Response:
    return requests.post(server.url + "/v1/messages", timeout=30,
                         headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"},
                         json={"model": "claude-sonnet-4-5", "max_tokens": 50,
                               "messages": [{"role": "user", "content": "hi"}]})


def test_disabled_account_is_skipped_by_requests(browser, site, fake):
    server, store = site
    browser.get(server.url + "/admin/")
    for name in ("default", "gamma"):
        click(browser, f'tr[data-account="{name}"] form[action$="/disable"] button')
        wait_for(lambda name=name: row_states(browser).get(name) == "disabled", what=f"{name} disabled")
    try:
        before = len(fake.requests)
        for _ in range(3):
            assert _message(server).status_code == 200
        used = {r["headers"].get("Authorization", "") for r in fake.requests[before:]}
        beta_token = store.load("beta")["accessToken"]
        assert used == {f"Bearer {beta_token}"}, "a disabled account served a request"
        counts = {row["name"]: row["requests_today"] for row in api_accounts(browser, site)["accounts"]}
        assert counts["beta"] >= 3 and counts["default"] == 0 and counts["gamma"] == 0
    finally:
        browser.get(server.url + "/admin/")
        for name in ("default", "gamma"):
            enable = f'tr[data-account="{name}"] form[action$="/enable"] button'
            if css_all(browser, enable):
                click(browser, enable)
                wait_for(lambda name=name: row_states(browser).get(name) == "active", what=f"{name} enabled")


def test_requests_show_in_the_counts_and_chart(browser, site):
    server, _ = site
    assert _message(server).status_code == 200
    data = api_accounts(browser, site)
    assert sum(minute[1] for minute in data["activity"][-2:]) >= 1
    assert sum(row["requests_today"] for row in data["accounts"]) >= 1
    browser.get(server.url + "/admin/")
    wait_for(lambda: "Updated" in css(browser, "#updated").text, what="the JSON refresh")
    shown = re.search(r"\((\d+) requests", css(browser, "#activity-total").text)
    assert shown and int(shown.group(1)) >= 1


def test_remove_asks_first(browser, site):
    server, store = site
    browser.get(server.url + "/admin/")
    click(browser, 'tr[data-account="gamma"] a.danger')
    wait_for(lambda: css(browser, "#confirm-remove"), what="the confirmation")
    keep(browser, "remove confirmation")
    screenshot(browser, "remove-confirm")
    css(browser, "a.button").click()  # Cancel
    wait_for(lambda: browser.current_url.endswith("/admin/"), what="back to the accounts")
    assert "gamma" in row_states(browser) and "gamma" in store.accounts()


def test_remove_deletes_the_login(browser, site):
    server, store = site
    browser.get(server.url + "/admin/accounts/gamma/remove")
    css(browser, "#confirm-remove").click()
    wait_for(lambda: browser.current_url.endswith("/admin/"), what="back to the accounts")
    keep(browser, "accounts page after a removal")
    assert "removed" in css(browser, ".flash").text
    assert "gamma" not in row_states(browser) and "gamma" not in store.accounts()


def test_no_token_or_key_in_any_page_or_json(browser, site, fake):
    server, store = site
    api_accounts(browser, site)
    assert len(SEEN) >= 8
    secrets = secrets_of(fake, store)
    assert ADMIN_KEY in secrets and store.load("beta")["refreshToken"] in secrets
    for what, text in SEEN:
        leaked = [secret[:6] + "..." for secret in secrets if secret in text]
        assert not leaked, f"{what} shows a secret: {leaked}"
    assert json.loads(SEEN[-1][1])["accounts"]


def test_logout(browser, site):
    server, _ = site
    browser.get(server.url + "/admin/")
    css(browser, "#logout").click()
    wait_for(lambda: browser.current_url.endswith("/admin/login"), what="the login page")
    browser.get(server.url + "/admin/")
    assert browser.current_url.endswith("/admin/login")
    assert requests.get(server.url + "/admin/api/accounts", cookies=session_cookies(browser),
                        timeout=5).status_code == 401
