"""A person at a keyboard standing in for the scanner, in a real browser.

Drives Debian's Chromium (Playwright) against a live server on loopback,
with the real Content-Security-Policy (so waits use locators, never eval):
log in, scan a parent, fill it with 30 children by typing + Enter, see it
complete and the next child refused, undo, then load a parent onto a bill
(confirming it is not complete) and close the bill.
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from helpers import PASSWORD
from werkzeug.serving import make_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium: apt-get install chromium"),
]


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def log_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(f"{base_url}/")


def scan(page, code: str) -> None:
    """What a wedge scanner does: type the code into the focused input, then Enter."""
    page.keyboard.type(code)
    page.keyboard.press("Enter")


def test_fill_a_parent_with_the_keyboard_only(live_server, browser, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    page = browser.new_page()
    errors = []  # JavaScript exceptions, including CSP violations
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, live_server, "floor1")

    page.goto(f"{live_server}/scan")
    scan(page, "sb00001")
    page.wait_for_selector("#scan-parent:not([hidden])")
    assert page.inner_text("#scan-parent-qr") == "SB00001"

    for number in range(1, 31):
        scan(page, f"KID{number:04d}")
        expect(page.locator("#scan-count")).to_have_text(str(number))
    assert page.inner_text("#scan-status") == "complete"
    assert "feedback-ok" in page.get_attribute("#scan-feedback", "class")

    scan(page, "KID0031")
    page.wait_for_selector("#scan-feedback.feedback-error")
    assert "complete" in page.inner_text("#scan-feedback")

    page.click("button.scan-undo")
    expect(page.locator("#scan-count")).to_have_text("29")
    assert page.inner_text("#scan-status") == "open"
    assert errors == []


def test_load_a_parent_and_close_the_bill(live_server, browser, make_user, make_parent):
    make_user("office", role="biller", area=None)
    make_parent("SB00002", children=3)
    page = browser.new_page()
    log_in(page, live_server, "office")

    page.goto(f"{live_server}/bills")
    page.fill("input[name=bill_no]", "truck-7")
    page.fill("input[name=capacity]", "2")
    page.fill("input[name=destination]", "Depot")
    page.press("input[name=destination]", "Enter")
    page.wait_for_url(f"{live_server}/bills/TRUCK-7")

    scan(page, "SB00002")  # the loading input has focus
    expect(page.locator(".feedback-error")).to_contain_text("is not complete (3/30)")
    page.click("text=Load anyway")
    expect(page.locator(".feedback-ok")).to_be_visible()
    expect(page.locator("main")).to_contain_text("SB00002")

    scan(page, "SB99999")
    page.wait_for_selector(".feedback-error")
    assert "not found" in page.inner_text(".feedback-error").lower()

    page.reload()
    page.once("dialog", lambda dialog: dialog.accept())  # "Close bill TRUCK-7? ..."
    page.click("text=Close bill")
    expect(page.locator("main")).to_contain_text("closed")


def test_print_the_dispatch_note_to_pdf(live_server, browser, make_user, make_parent, make_bill, tmp_path):
    from bagtrack import billing
    from bagtrack.extensions import db

    office = make_user("office", role="biller", area=None)
    for qr in ("SB00003", "SB00004"):
        make_parent(qr, children=4)
    make_bill("TRUCK-9", capacity=3, vehicle_no="MH 12 AB 1234", destination="Hamburg port")
    for qr in ("SB00003", "SB00004"):
        billing.load_parent(db.session, office, "TRUCK-9", qr, confirmed=True)
    billing.close_bill(db.session, office, "TRUCK-9")
    db.session.commit()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # CSP violations are reported on the console; the browser's own favicon request is no page's.
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    missing = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    log_in(page, live_server, "office")

    page.goto(f"{live_server}/bills/TRUCK-9")
    page.click("text=Print dispatch note")
    page.wait_for_url(f"{live_server}/bills/TRUCK-9/print")
    page.screenshot(path=str(tmp_path / "dispatch-note-screen.png"), full_page=True)
    expect(page.locator("#print-button")).to_be_visible()

    page.emulate_media(media="print")
    for control in ("form", "input", "button", "select", "textarea", "nav", "header.topbar"):
        for element in page.locator(control).all():
            expect(element).to_be_hidden()
    expect(page.locator(".note-qr svg")).to_be_visible()
    box = page.locator(".note-qr svg").bounding_box()
    assert box["width"] > 60 and box["height"] > 60
    expect(page.locator(".signatures")).to_contain_text("Driver")
    expect(page.locator(".note-parents tfoot")).to_contain_text("8.0")
    page.screenshot(path=str(tmp_path / "dispatch-note-print.png"), full_page=True)
    pdf = page.pdf(format="A4", print_background=True)
    assert pdf.startswith(b"%PDF-") and len(pdf) > 2_000
    (tmp_path / "dispatch-note.pdf").write_bytes(pdf)
    assert [url for url in missing if not url.endswith("/favicon.ico")] == []
    assert [error for error in errors if "404" not in error] == []


def busy_floor(make_user, make_parent, make_bill):
    """Enough of a shift for every chart to draw something: scans, a completed parent, refusals, an open bill."""
    from bagtrack import billing, scanning
    from bagtrack.errors import Refusal
    from bagtrack.extensions import db

    worker = make_user("floor1", role="dispatcher", area="NORTH")
    office = make_user("office", role="biller", area=None)
    make_parent("SB00001", children=30, user=worker)
    make_parent("SB00002", children=4, user=worker)
    for qr in ("SB00003", "BAD!"):
        with pytest.raises(Refusal):
            scanning.scan_child(db.session, worker, "SB00002", qr)
    make_bill("B-1", capacity=3)
    billing.load_parent(db.session, office, "B-1", "SB00001", confirmed=True)
    return worker


@pytest.mark.parametrize(("width", "height"), [(360, 740), (1366, 900)])
def test_dashboard_charts_render_and_refresh_by_themselves(
    live_server, browser, app, make_user, make_parent, make_bill, width, height, tmp_path
):
    from bagtrack import scanning
    from bagtrack.extensions import db

    app.config["BAGTRACK_DASHBOARD_REFRESH_S"] = 1.0
    worker = busy_floor(make_user, make_parent, make_bill)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []  # JavaScript exceptions, CSP violations and failed loads (but the browser's own favicon guess)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda answer: errors.append(answer.url) if answer.status >= 400 else None)
    page.on("requestfailed", lambda request: errors.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    log_in(page, live_server, "office")

    for chart in ("#chart-hours svg rect.bar-accepted", "#chart-completed svg rect", "#bills-in-progress progress"):
        expect(page.locator(chart).first).to_be_attached()
    expect(page.locator("#refusals-by-reason")).to_contain_text("wrong_kind")
    expect(page.locator("#updated")).to_be_visible()
    box = page.locator("#chart-hours svg").bounding_box()
    assert 0 < box["width"] <= width
    before = page.inner_text("#fig-scans-today")

    scanning.scan_child(db.session, worker, "SB00002", "NEWKID01")

    # Nobody touches the page: it fetches the figures again by itself.
    expect(page.locator("#fig-scans-today")).not_to_have_text(before, timeout=10_000)
    expect(page.locator("table.scan-log")).to_contain_text("NEWKID01")
    page.screenshot(path=str(tmp_path / f"dashboard-{width}.png"), full_page=True)
    assert [error for error in errors if "favicon" not in error and "Failed to load resource" not in error] == []
