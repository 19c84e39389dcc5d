"""The floor's handheld in a real browser: Debian's Chromium at 360x740.

Every page fits the screen; scans typed while the network is gone, while the
server restarts or before the tab is closed are all stored, in order; each
outcome has its own sound; the plain form posts keep working without
JavaScript. Waits use locators, and the page's own script is never replaced:
the real Content-Security-Policy applies.

``BAGTRACK_SCREENSHOTS=<dir>`` saves the scanner in each of its states there
(the README's screenshots come from it).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from helpers import PASSWORD
from servers import Gunicorn, scratch_database
from sqlalchemy import create_engine, select, text
from test_browser import CHROMIUM, expect, log_in, scan
from werkzeug.serving import make_server

from bagtrack.extensions import db
from bagtrack.models import Bag, Scan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium: apt-get install chromium"),
]
HANDHELD = {"width": 360, "height": 740}
SCREENSHOTS = os.environ.get("BAGTRACK_SCREENSHOTS")

# Web Audio and vibration, recorded instead of played: each tone is its frequency.
RECORD_SOUNDS = """
window.__tones = [];
window.__vibrations = 0;
window.AudioContext = class {
  constructor() { this.currentTime = 0; this.state = "running"; this.destination = {}; }
  resume() {}
  createGain() { return { gain: { value: 1 }, connect() {} }; }
  createOscillator() {
    const tone = { type: "", frequency: { value: 0 }, connect() {}, stop() {} };
    tone.start = () => window.__tones.push(tone.frequency.value);
    return tone;
  }
};
navigator.vibrate = () => { window.__vibrations += 1; return true; };
"""
ACCEPTED, DUPLICATE, COMPLETE, REFUSED = [880], [660, 660], [523, 659, 784], [196]


def snap(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"scanner-{name}.png"))


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def live(app):
    app.config["BAGTRACK_PARENT_CAPACITY"] = 3  # a parent completes after three scans
    server, thread = serve(app)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        yield browser
        browser.close()


def handheld(chromium, **options):
    context = chromium.new_context(viewport=HANDHELD, **options)
    context.add_init_script(RECORD_SOUNDS)
    return context


def logged_in_handheld(chromium, base: str, username: str, path: str = "/scan"):
    """A handheld browser context with ``username`` logged in and ``path`` open: (context, page)."""
    context = handheld(chromium)
    page = context.new_page()
    log_in(page, base, username)
    page.goto(f"{base}{path}")
    return context, page


def tones(page) -> list[float]:
    """The tones played since the last call."""
    return page.evaluate("() => window.__tones.splice(0)")


def child_scans(qrs=None) -> list[tuple[str, str, str]]:
    """Accepted child scans in the order the server stored them: (child, parent, outcome)."""
    db.session.expire_all()
    parent = Bag.__table__.alias("parent")
    rows = db.session.execute(
        select(Scan.qr, parent.c.qr, Scan.outcome)
        .join(parent, parent.c.id == Scan.parent_id)
        .where(Scan.kind == "child")
        .order_by(Scan.id)
    ).all()
    return [tuple(row) for row in rows]


def wait_until_sent(page, timeout: float = 30_000) -> None:
    expect(page.locator("#queue-count")).to_have_text("0", timeout=timeout)
    expect(page.locator("#queue-state")).to_have_text("all sent", timeout=timeout)


def test_every_page_fits_a_handheld_screen(live, chromium, make_user, make_parent, make_bill):
    make_user("boss", role="admin", area=None)
    make_user("floor1", role="dispatcher", area="NORTH")
    full = make_parent("SB00001", children=3)
    make_parent("SB00002", children=1)
    make_bill("TRUCK-2026-LONG-BILL-NUMBER-0001", capacity=40, destination="Far away " * 12, description="x " * 300)
    from bagtrack import billing
    from bagtrack.models import User

    factory = db.session.scalars(select(User).where(User.username == "factory")).one()
    billing.load_parent(db.session, factory, "TRUCK-2026-LONG-BILL-NUMBER-0001", full.qr, confirmed=True)
    child = db.session.scalars(select(Bag.qr).where(Bag.parent_id == full.id)).first()
    pages = {
        "boss": [
            "/",
            "/scan",
            f"/scan?parent={full.qr}",
            "/bags",
            f"/bags/{full.qr}",
            f"/bags/{child}",
            "/scans",
            "/bills",
            "/bills/TRUCK-2026-LONG-BILL-NUMBER-0001",
            "/admin/",
            "/admin/audit",
            "/exports/",
        ],
        "floor1": ["/", "/scan", "/scan?parent=SB00002", "/bags", "/scans"],
    }
    too_wide = []
    context = handheld(chromium)
    page = context.new_page()
    page.goto(f"{live}/login")
    too_wide += [("/login", page.evaluate("document.documentElement.scrollWidth"))]
    for user, paths in pages.items():
        log_in(page, live, user)
        for path in paths:
            page.goto(f"{live}{path}")
            too_wide.append((f"{user} {path}", page.evaluate("document.documentElement.scrollWidth")))
        page.click("text=Log out")
    assert [(path, width) for path, width in too_wide if width > HANDHELD["width"]] == []
    context.close()


def test_scans_typed_offline_are_stored_in_order_when_the_network_returns(live, chromium, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    context, page = logged_in_handheld(chromium, live, "floor1")
    expect(page.locator("#queue-box")).to_be_visible()
    snap(page, "waiting")
    scan(page, "SB00010")
    expect(page.locator("#scan-count")).to_have_text("0")

    context.set_offline(True)
    for code in ("KID0001", "KID0002"):
        scan(page, code)
    expect(page.locator("#queue-count")).to_have_text("2")
    expect(page.locator("#queue-box")).to_have_attribute("data-state", "offline")
    expect(page.locator("#queue-waiting li")).to_have_count(2)
    assert page.input_value("#child-qr") == ""  # the next scan never lands on an unsent one
    snap(page, "offline")
    context.set_offline(False)
    wait_until_sent(page)
    expect(page.locator("#scan-count")).to_have_text("2")
    assert child_scans() == [("KID0001", "SB00010", "ok"), ("KID0002", "SB00010", "ok")]
    context.close()


def test_a_closed_tab_sends_its_queue_when_opened_again_even_offline(live, chromium, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    context, page = logged_in_handheld(chromium, live, "floor1")
    page.evaluate("() => navigator.serviceWorker.ready.then(() => true)")
    scan(page, "SB00020")
    expect(page.locator("#scan-count")).to_have_text("0")
    page.reload()  # the offline copy is now this parent's page
    page.evaluate("() => navigator.serviceWorker.ready.then(() => true)")

    context.set_offline(True)
    for code in ("KID0021", "SB00021", "KID0022"):  # a parent code in the child box switches parent
        scan(page, code)
    expect(page.locator("#queue-count")).to_have_text("3")
    page.close()

    # The tab is opened again with no network: the offline copy shows what waits.
    page = context.new_page()
    page.goto(f"{live}/scan?parent=SB00020")
    expect(page.locator("#queue-count")).to_have_text("3")
    expect(page.locator("#scan-parent-qr")).to_have_text("SB00020")
    context.set_offline(False)
    wait_until_sent(page)
    expect(page.locator("#scan-parent-qr")).to_have_text("SB00021")
    assert child_scans() == [("KID0021", "SB00020", "ok"), ("KID0022", "SB00021", "ok")]
    context.close()


def test_sounds_and_the_complete_state(live, chromium, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    context, page = logged_in_handheld(chromium, live, "floor1")
    scan(page, "SB00030")
    expect(page.locator("#scan-feedback")).to_contain_text("SB00030")
    assert tones(page) == ACCEPTED

    scan(page, "KID0031")
    expect(page.locator("#scan-count")).to_have_text("1")
    assert tones(page) == ACCEPTED
    scan(page, "KID0031")
    expect(page.locator("#scan-feedback")).to_contain_text("already in this parent")
    assert tones(page) == DUPLICATE
    scan(page, "bad-code!")
    expect(page.locator("#scan-feedback.feedback-error")).to_contain_text("This is not a bag code")
    assert "^" not in page.inner_text("#scan-feedback")
    assert tones(page) == REFUSED
    assert page.evaluate("window.__vibrations") == 1
    snap(page, "refused")

    scan(page, "KID0032")
    expect(page.locator("#scan-count")).to_have_text("2")
    tones(page)
    scan(page, "KID0033")
    expect(page.locator("#scan-complete")).to_be_visible()
    expect(page.locator("#scan-complete")).to_contain_text("COMPLETE")
    assert tones(page) == COMPLETE
    expect(page.locator("#child-form")).to_be_hidden()
    expect(page.locator("#parent-qr")).to_be_focused()
    snap(page, "complete")

    scan(page, "KID0033")  # the scanner fired twice: a harmless duplicate, not a wrong parent code
    expect(page.locator("#scan-feedback.feedback-ok")).to_contain_text("already in this parent")
    assert tones(page) == DUPLICATE
    scan(page, "SB00031")
    expect(page.locator("#scan-parent-qr")).to_have_text("SB00031")
    expect(page.locator("#scan-complete")).to_be_hidden()
    expect(page.locator("#child-qr")).to_be_focused()
    context.close()


def test_a_slow_answer_shows_sending(live, chromium, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    context, page = logged_in_handheld(chromium, live, "floor1", "/scan?parent=")
    held = []
    page.route("**/scan/parent", lambda route: held.append(route))
    scan(page, "SB00040")
    expect(page.locator("#queue-box")).to_have_attribute("data-state", "sending")
    expect(page.locator("#queue-state")).to_have_text("sending…")
    snap(page, "sending")
    held[0].continue_()
    wait_until_sent(page)
    expect(page.locator("#scan-parent-qr")).to_have_text("SB00040")
    context.close()


def test_an_expired_session_keeps_the_scans_and_logs_in_again_to_the_same_parent(live, chromium, make_user):
    make_user("floor1", role="dispatcher", area="NORTH")
    context, page = logged_in_handheld(chromium, live, "floor1")
    scan(page, "SB00050")
    expect(page.locator("#scan-count")).to_have_text("0")
    context.clear_cookies()  # the session is gone, as after the idle timeout
    scan(page, "KID0051")
    login = page.locator("#queue-login")
    expect(login).to_be_visible()
    expect(page.locator("#queue-count")).to_have_text("1")
    assert "next=%2Fscan%3Fparent%3DSB00050" in login.get_attribute("href")
    login.click()
    page.fill("input[name=username]", "floor1")
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(f"{live}/scan?parent=SB00050")
    wait_until_sent(page)
    expect(page.locator("#scan-count")).to_have_text("1")
    assert child_scans() == [("KID0051", "SB00050", "ok")]
    context.close()


def test_a_refused_replay_stays_listed_until_dismissed(live, chromium, make_user, make_parent):
    make_user("floor1", role="dispatcher", area="NORTH")
    make_parent("SB00061", children=1)  # KID of another parent below
    context, page = logged_in_handheld(chromium, live, "floor1")
    scan(page, "SB00060")
    expect(page.locator("#scan-count")).to_have_text("0")
    taken = db.session.scalar(select(Bag.qr).where(Bag.kind == "child"))
    context.set_offline(True)
    scan(page, taken)
    scan(page, "KID0060")
    expect(page.locator("#queue-count")).to_have_text("2")
    expect(page.locator("#queue-box")).to_have_attribute("data-state", "offline")
    context.set_offline(False)
    wait_until_sent(page)
    refused = page.locator("#queue-refused li")
    expect(refused).to_have_count(1)
    expect(refused).to_contain_text(taken)
    expect(page.locator("#scan-count")).to_have_text("1")
    page.reload()
    expect(page.locator("#queue-refused li")).to_have_count(1)  # kept across a reload
    page.click("#queue-refused li button:text('Dismiss')")
    expect(page.locator("#queue-refused")).to_be_hidden()
    context.close()


def test_the_bill_page_queues_confirms_and_shows_recent_scans(live, chromium, make_user, make_parent, make_bill):
    make_user("office", role="biller", area=None)
    full = make_parent("SB00071", children=3)
    half = make_parent("SB00072", children=1)
    make_bill("B-7", capacity=2)
    context, page = logged_in_handheld(chromium, live, "office", "/bills/B-7")
    scan(page, full.qr)
    expect(page.locator("#load-feedback.feedback-ok")).to_contain_text(f"Loaded {full.qr}")
    assert tones(page) == ACCEPTED
    expect(page.locator("#bill-scans tbody tr").first).to_contain_text(full.qr)

    context.set_offline(True)
    scan(page, half.qr)
    expect(page.locator("#queue-count")).to_have_text("1")
    expect(page.locator("#queue-box")).to_have_attribute("data-state", "offline")
    context.set_offline(False)
    wait_until_sent(page)
    expect(page.locator("#queue-refused li")).to_contain_text("is not complete")
    assert tones(page) == REFUSED
    page.click("#queue-refused li button:text('Load anyway')")
    expect(page.locator("#load-feedback.feedback-ok")).to_contain_text(f"Loaded {half.qr}")
    expect(page.locator("#bill-full")).to_be_visible()
    assert tones(page) == COMPLETE
    expect(page.locator("#bill-scans tbody tr")).to_have_count(3)

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("text=Close bill")
    expect(page.locator("#load-form")).to_be_visible()
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("text=Close bill")
    expect(page.locator("text=Reopen bill")).to_be_visible()
    expect(page.locator("#load-form")).to_have_count(0)
    assert asked == [asked[0]] * 2 and asked[0].startswith("Close bill B-7?")
    context.close()


def test_without_javascript_the_forms_still_post(live, chromium, make_user, make_area, make_bill):
    make_area("NORTH")
    make_user("office", role="biller", area=None)
    make_bill("B-8", capacity=2)
    context = chromium.new_context(viewport=HANDHELD, java_script_enabled=False)
    page = context.new_page()
    log_in(page, live, "office")
    page.goto(f"{live}/scan")
    page.fill("#parent-qr", "SB00080")
    page.press("#parent-qr", "Enter")
    page.wait_for_url(f"{live}/scan?parent=SB00080")
    page.fill("#child-qr", "KID0080")
    page.press("#child-qr", "Enter")
    expect(page.locator("#scan-count")).to_have_text("1")

    page.goto(f"{live}/bills/B-8")
    page.fill("#load-qr", "SB00080")
    page.press("#load-qr", "Enter")
    expect(page.locator("#load-feedback")).to_contain_text("is not complete")
    page.click("text=Load SB00080 anyway")
    expect(page.locator("main")).to_contain_text("Loaded parent bag SB00080")
    context.close()


@pytest.mark.postgres
def test_a_server_restart_mid_burst_loses_nothing(make_app, database_url, tmp_path, chromium):
    name = f"{make_url_database(database_url)}_handheld"
    with scratch_database(database_url, name) as scratch_url:
        cli = make_app(SQLALCHEMY_DATABASE_URI=scratch_url).test_cli_runner()
        for command in (
            ["areas", "add", "NORTH"],
            ["users", "create", "floor1", "--role", "dispatcher", "--area", "NORTH", "--password", PASSWORD],
        ):
            assert cli.invoke(args=command).exit_code == 0
        environment = {
            "DATABASE_URL": scratch_url,
            "REDIS_URL": "",
            "SECRET_KEY": "handheld-test-secret-" * 2,
        }
        server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "1")
        context = handheld(chromium)
        try:
            page = context.new_page()
            log_in(page, server.base, "floor1")
            page.goto(f"{server.base}/scan")
            scan(page, "SB00090")
            expect(page.locator("#scan-count")).to_have_text("0")
            codes = [f"KID{number:04d}" for number in range(90, 110)]
            for code in codes[:5]:
                scan(page, code)
            server.terminate(10)
            for code in codes[5:15]:
                scan(page, code)
            time.sleep(1)  # the page meets the dead server and backs off
            server = Gunicorn(tmp_path / "gunicorn2.log", environment, "-w", "1", port=server.port)
            for code in codes[15:]:
                scan(page, code)
            wait_until_sent(page, timeout=60_000)
            expect(page.locator("#scan-count")).to_have_text("20")
        finally:
            context.close()
            server.kill()
        engine = create_engine(scratch_url)
        with engine.connect() as connection:
            stored = connection.execute(
                text("select qr from scan where kind = 'child' and outcome = 'ok' order by id")
            ).scalars()
            assert list(stored) == codes
        engine.dispose()


def make_url_database(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).database
