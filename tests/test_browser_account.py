"""A person's own account in a real browser, on a handheld's screen and on a desktop:
change the password, turn on two-factor login and log in with a code and with a
recovery code, log out on every device."""

from __future__ import annotations

import time

import pyotp
import pytest
from helpers import PASSWORD
from test_browser import browser, expect, live_server, log_in, pytestmark  # noqa: F401 (fixtures, marks)

SCREENS = {"handheld": {"width": 360, "height": 740}, "desktop": {"width": 1280, "height": 800}}
NEW_PASSWORD = "a-brand-new-secret"


@pytest.fixture(params=list(SCREENS))
def screen(request):
    return request.param


def new_page(browser, screen: str):  # noqa: F811 (the fixture's value)
    page = browser.new_context(viewport=SCREENS[screen]).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: "Content Security Policy" in message.text and errors.append(message.text))
    return page, errors


def fits_the_screen(page) -> bool:
    """The page's content is no wider than the viewport (no sideways scrolling on a handheld)."""
    return page.locator("main").evaluate("main => main.scrollWidth") <= page.viewport_size["width"]


def test_change_your_password(live_server, browser, make_user, screen, tmp_path):  # noqa: F811
    make_user("floor1")
    page, errors = new_page(browser, screen)
    log_in(page, live_server, "floor1")
    page.click("a.who")
    page.wait_for_url(f"{live_server}/account/password")
    page.fill("input[name=current]", PASSWORD)
    page.fill("input[name=new]", "password1234")
    page.fill("input[name=repeated]", "password1234")
    page.click("button:has-text('Change password')")
    expect(page.locator(".feedback-error")).to_contain_text("too common")
    page.fill("input[name=current]", PASSWORD)
    page.fill("input[name=new]", NEW_PASSWORD)
    page.fill("input[name=repeated]", NEW_PASSWORD)
    page.click("button:has-text('Change password')")
    expect(page.locator(".flash-ok")).to_contain_text("Your password is changed")
    page.screenshot(path=str(tmp_path / f"password-{screen}.png"), full_page=True)
    assert fits_the_screen(page)
    assert errors == []


def log_in_with_code(page, base_url: str, username: str, code: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(f"{base_url}/login/code")
    page.fill("input[name=code]", code)
    page.press("input[name=code]", "Enter")
    page.wait_for_url(f"{base_url}/")


def test_two_factor_enrolment_then_logins_with_a_code_and_a_recovery_code(
    live_server,  # noqa: F811
    browser,  # noqa: F811
    make_user,
    screen,
    tmp_path,
):
    make_user("boss", role="admin", area=None)
    page, errors = new_page(browser, screen)
    log_in(page, live_server, "boss")
    page.goto(f"{live_server}/account/2fa")
    expect(page.locator("figure.qr svg")).to_be_visible()
    page.screenshot(path=str(tmp_path / f"2fa-enrol-{screen}.png"), full_page=True)
    assert fits_the_screen(page)
    secret = page.inner_text("code.totp-secret")
    page.fill("input[name=code]", pyotp.TOTP(secret).now())
    page.click("button:has-text('Turn on two-factor login')")
    codes = page.locator("code.recovery-code").all_inner_texts()
    assert len(codes) == 10
    page.screenshot(path=str(tmp_path / f"2fa-codes-{screen}.png"), full_page=True)
    assert fits_the_screen(page)

    page.click("button:has-text('Log out')")
    # The code of the next step: the current one was spent on enrolling.
    log_in_with_code(page, live_server, "boss", pyotp.TOTP(secret).at(time.time() + 30))
    page.goto(f"{live_server}/account/2fa")
    expect(page.locator(".codes-left")).to_have_text("10")

    page.click("button:has-text('Log out')")
    log_in_with_code(page, live_server, "boss", codes[0])
    page.goto(f"{live_server}/account/2fa")
    expect(page.locator(".codes-left")).to_have_text("9")
    assert errors == []


def test_log_out_on_every_device(live_server, browser, make_user, screen):  # noqa: F811
    make_user("floor1")
    handheld, errors = new_page(browser, screen)
    office, _ = new_page(browser, "desktop")
    log_in(handheld, live_server, "floor1")
    log_in(office, live_server, "floor1")
    office.goto(f"{live_server}/account/password")
    office.click("button:has-text('Log out on every device')")
    office.wait_for_url(f"{live_server}/login")
    expect(office.locator(".flash-ok")).to_contain_text("every device")
    handheld.goto(f"{live_server}/bags")
    assert handheld.url.startswith(f"{live_server}/login")
    assert errors == []
