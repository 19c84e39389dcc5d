"""The live dashboard, the operator report and the daily dispatch summary, read from the per-hour tally."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bagtrack import billing, floor, scanning, timeline
from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import Scan
from bagtrack.shapes import iso


@pytest.fixture
def shift(make_parent, make_user, make_bill):
    """Two operators in two areas: a completed parent, a partial one, refusals; a bill closed today.

    Accepted scans count the parent scan that starts each parent.
    """
    north = make_user("north1", "dispatcher", "NORTH")
    south = make_user("south1", "dispatcher", "SOUTH")
    office = make_user("office", "biller", None)
    make_parent("SB00001", user=north)
    for number in range(30):
        scanning.scan_child(db.session, north, "SB00001", f"CN{number:04d}")
    make_parent("SB00002", area="SOUTH", user=south)
    scanning.scan_child(db.session, south, "SB00002", "CS0001")
    for qr in ("SB00001", "BAD!"):
        with pytest.raises(Refusal):
            scanning.scan_child(db.session, south, "SB00002", qr)
    bill = make_bill("B-7", capacity=2, destination="Pune", vehicle_no="MH12 AB 1234")
    billing.load_parent(db.session, office, "B-7", "SB00001", confirmed=True)
    billing.close_bill(db.session, office, "B-7")
    return {"north": north, "south": south, "office": office, "bill": bill}


def test_operator_report_counts_what_the_scan_log_holds(shift):
    rows = {row["user"]: row for row in floor.operators_report(db.session, timeline.today(), None)}

    north, south = rows["north1"], rows["south1"]
    assert (north["area"], north["accepted"], north["rejected"], north["parents_completed"]) == ("NORTH", 31, 0, 1)
    assert (south["area"], south["accepted"], south["rejected"]) == ("SOUTH", 2, 2)
    assert south["rejected_by_reason"] == {"wrong_kind": 1, "invalid_qr": 1}
    assert north["active_hours"] >= 1
    # First and last scan (refusals included) are the user's first and last rows in the area's log.
    for user, row in ((shift["north"], north), (shift["south"], south)):
        logged = db.session.execute(
            select(func.min(Scan.at), func.max(Scan.at)).where(Scan.user_id == user.id, Scan.area_id == user.area_id)
        ).one()
        assert (row["first_at"], row["last_at"]) == tuple(logged)
        assert row["first_at"] < row["last_at"]
    assert find_violations(db.session) == []


def test_dispatcher_sees_only_their_area(shift, login_as):
    client = login_as("south1")

    body = client.get("/api/reports/operators").get_json()

    assert [row["user"] for row in body["operators"]] == ["south1"]
    assert body["day"] == timeline.today().isoformat()
    assert body["operators"][0]["first_at"].endswith("Z")
    assert client.get("/api/reports/operators?area=NORTH").status_code == 404
    assert client.get("/api/reports/daily").status_code == 403


def test_daily_summary_lists_the_bills_closed_that_day(shift, login_as):
    client = login_as("office")

    body = client.get("/api/reports/daily").get_json()

    assert body["totals"] == {"bills": 1, "parents": 1, "children": 30, "weight_kg": 30.0}
    (bill,) = body["bills"]
    assert (bill["bill_no"], bill["destination"], bill["vehicle"], bill["closed_by"]) == (
        "B-7",
        "Pune",
        "MH12 AB 1234",
        "office",
    )
    page = client.get("/reports/daily")
    assert page.status_code == 200 and b"B-7" in page.data
    download = client.get("/reports/daily?format=csv")
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True))))
    assert rows[0][0] == "bill_no" and rows[1][0] == "B-7"
    assert client.get("/reports/daily?format=xlsx").data[:2] == b"PK"
    assert client.get("/reports/operators?format=csv").status_code == 200
    assert client.get("/reports/daily?day=2026-13-01").status_code == 400
    assert client.get("/reports/daily?day=1999-01-01").get_json() is None  # a page, not JSON
    assert client.get("/api/reports/daily?day=1999-01-01").get_json()["bills"] == []


def test_dashboard_shows_charts_and_a_refreshing_part(shift, login_as):
    client = login_as("office")

    page = client.get("/").get_data(as_text=True)
    live = client.get("/dashboard/live").get_data(as_text=True)

    for html in (page, live):
        assert 'id="chart-hours"' in html and "<svg" in html
        assert "wrong_kind" in html and "SB00002" in html  # refusals by reason, oldest open parent
    assert 'data-refresh-s="' in page and "dashboard.js" in page
    assert "<html" not in live


def test_local_day_range_follows_the_time_zone(app):
    app.config["BAGTRACK_TIMEZONE"] = ZoneInfo("Asia/Kolkata")
    start, end = timeline.day_range(date(2026, 12, 4))
    assert (start, end) == (datetime(2026, 12, 3, 18, 30), datetime(2026, 12, 4, 18, 30))
    assert timeline.hour_start(datetime(2026, 12, 4, 10, 15)) == datetime(2026, 12, 4, 9, 30)
    app.config["BAGTRACK_TIMEZONE"] = ZoneInfo("Europe/Berlin")
    assert timeline.day_range(date(2026, 10, 25)) == (datetime(2026, 10, 24, 22), datetime(2026, 10, 25, 23))


def test_unknown_time_zone_stops_the_start(monkeypatch):
    from bagtrack import create_app

    monkeypatch.setenv("BAGTRACK_TIMEZONE", "Mars/Olympus")
    with pytest.raises(SystemExit, match="BAGTRACK_TIMEZONE must be an IANA time zone name"):
        create_app()


@pytest.mark.postgres
@pytest.mark.slow
def test_reports_through_gunicorn_in_local_time(make_app, database_url, tmp_path):
    """Scans through the real server land in the operator report of the local day, in Kolkata."""
    from helpers import PASSWORD
    from servers import Gunicorn, http_login, scratch_database
    from sqlalchemy.engine import make_url

    name = f"{make_url(database_url).database}_reports"
    with scratch_database(database_url, name) as scratch_url:
        cli = make_app(SQLALCHEMY_DATABASE_URI=scratch_url).test_cli_runner()
        for command in (
            ["areas", "add", "NORTH"],
            ["users", "create", "floor", "--role", "dispatcher", "--area", "NORTH", "--password", PASSWORD],
            ["users", "create", "office", "--role", "biller", "--password", PASSWORD],
        ):
            result = cli.invoke(args=command)
            assert result.exit_code == 0, result.output
        environment = {
            "DATABASE_URL": scratch_url,
            "SECRET_KEY": "reports-test-secret-reports-test-secret",
            "REDIS_URL": "",
            "BAGTRACK_TIMEZONE": "Asia/Kolkata",
        }
        server = Gunicorn(tmp_path / "gunicorn.log", environment, "-w", "2")
        try:
            floor_client = http_login(server.base, "floor", PASSWORD)
            assert floor_client.post(f"{server.base}/scan/parent", data={"qr": "SB00001"}).status_code == 201
            for number in range(3):
                child = {"parent": "SB00001", "qr": f"KID{number:04d}"}
                assert floor_client.post(f"{server.base}/scan/child", data=child).status_code == 201
            refused = floor_client.post(f"{server.base}/scan/child", data={"parent": "SB00001", "qr": "!"})
            assert refused.status_code == 400

            body = (
                http_login(server.base, "office", PASSWORD)
                .get(f"{server.base}/api/reports/operators", timeout=5)
                .json()
            )
        finally:
            server.terminate(timeout=30)
        with cli.app.app_context():
            logged = db.session.execute(select(func.min(Scan.at), func.max(Scan.at))).one()
            db.session.remove()
    assert body["day"] == datetime.now(ZoneInfo("Asia/Kolkata")).date().isoformat()
    (row,) = body["operators"]
    assert (row["user"], row["area"], row["accepted"], row["rejected"]) == ("floor", "NORTH", 4, 1)
    assert row["rejected_by_reason"] == {"invalid_qr": 1}
    # First and last scan as the log holds them: the parent scan, and the refusal.
    assert (row["first_at"], row["last_at"]) == (iso(logged[0]), iso(logged[1]))
