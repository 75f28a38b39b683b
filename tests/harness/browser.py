"""A real browser for the approval page's tests: Debian's chromium, headless, driven through
chromedriver (selenium), with WebAuthn virtual authenticators (the DevTools WebAuthn domain,
through WebDriver's virtual-authenticator extension) standing in for the owners' phones."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.harness.gateway import RunningGateway

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PHONE = (390, 844)  # CSS pixels of a common phone screen


def available() -> None:
    """Skip without chromium locally; under CI a missing browser is a failure."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not missing:
        return
    message = f"browser tests need {' and '.join(missing)} (apt install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, url: str) -> None:
        self.driver.get(url)

    def new_authenticator(self) -> str:
        """A platform authenticator with user verification (a phone's) in place of the one
        before (chromium allows one internal authenticator at a time): another owner's."""
        from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions

        if self.driver.virtual_authenticator_id is not None:
            self.driver.remove_virtual_authenticator()

        options = VirtualAuthenticatorOptions()
        options.protocol = VirtualAuthenticatorOptions.Protocol.CTAP2
        options.transport = VirtualAuthenticatorOptions.Transport.INTERNAL
        options.has_user_verification = True
        options.is_user_verified = True
        options.has_resident_key = True
        self.driver.add_virtual_authenticator(options)
        return str(self.driver.virtual_authenticator_id)

    def drop_authenticator(self) -> None:
        self.driver.remove_virtual_authenticator()

    def credential_ids(self) -> list[str]:
        """base64url ids of the active authenticator's credentials."""
        return [c.id for c in self.driver.get_credentials()]

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.ID, element_id).text)

    def exists(self, element_id: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_elements(By.ID, element_id))

    def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, element_id).click()

    def press_enter_on(self, element_id: str) -> None:
        """Keyboard only: focus the control with Tab order and press Enter."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver.find_element(By.ID, element_id).send_keys(Keys.ENTER)

    def status(self, done: Callable[[str], bool] = bool, timeout: float = 15) -> str:
        """The page's status line once ``done`` says it is final."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text("status")
            if (done(text) and text != "Working…") or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def run_async(self, script: str, *args: Any) -> Any:
        return self.driver.execute_async_script(script, *args)

    def screenshot(self, path: str, width: int = 390) -> None:
        """The page as a phone of ``width`` CSS pixels shows it, whole (headless chromium
        keeps its windows at least 500 px wide: the device metrics say what a phone says)."""
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
            metrics["height"] = height
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            self.driver.save_screenshot(path)
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def enrol_owner(gw: RunningGateway, browser: Browser, name: str) -> str:
    """`owners add NAME`, then a passkey enrolled through the link it printed (in a new
    virtual authenticator: this owner's phone); the link works once."""
    out = gw.cli("owners", "add", name).stdout
    link = out.split()[-1]
    assert link.startswith("http://localhost:") and "/o/enrol/" in link
    browser.new_authenticator()
    browser.open(link)
    assert browser.text("owner") == name
    browser.click("enrol")
    assert browser.status(lambda s: "added" in s or "Not done" in s) == (
        "Passkey added. You can close this page."
    )
    browser.open(link)  # the enrolment link is single-use
    assert "not valid" in browser.text("status") or not browser.exists("enrol")
    return name


@contextmanager
def chromium(size: tuple[int, int] = PHONE) -> Iterator[Browser]:
    from selenium import webdriver

    available()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI; the browser only ever opens loopback test pages
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(20)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
