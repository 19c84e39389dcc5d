"""``flask export`` and ``GET /exports/<what>.<format>``: rows of a range of days, scoped like the pages, streamed."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from helpers import JSON
from openpyxl import load_workbook
from sqlalchemy import select, update

from bagtrack import billing
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, Scan, User

TODAY = datetime.now(UTC).date()
OLD = TODAY - timedelta(days=10)


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def backdate(*qrs: str, days: int = 10) -> None:
    """Move parents, their children and their scans into the past; they were made first, so ids still follow time."""
    moment = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
    parent_ids = db.session.scalars(select(Bag.id).where(Bag.qr.in_(qrs))).all()
    bag_ids = db.session.scalars(select(Bag.id).where(Bag.id.in_(parent_ids) | Bag.parent_id.in_(parent_ids))).all()
    db.session.execute(update(Bag).where(Bag.id.in_(bag_ids)).values(created_at=moment))
    db.session.execute(update(Scan).where(Scan.bag_id.in_(bag_ids)).values(at=moment))
    db.session.commit()


def site(make_parent, make_user, make_bill):
    """Two old parents in NORTH, a new one in NORTH and one in SOUTH, one bill carrying the new NORTH parent."""
    make_parent("SB00001", children=1)
    make_parent("SB00002")
    backdate("SB00001", "SB00002")
    make_parent("SB00003", children=2)
    make_parent("SB00004", area="SOUTH", children=1)
    make_bill("B-1", capacity=3, description='=HYPERLINK("http://evil")')
    billing.load_parent(db.session, db.session.scalars(select(User).where(User.username == "factory")).one(), "B-1",
                        "SB00003", confirmed=True)  # fmt: skip


def test_cli_exports_bags_of_a_range_as_csv(runner, tmp_path, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)
    target = tmp_path / "bags.csv"

    result = runner.invoke(
        args=["export", "bags", "--from", TODAY.isoformat(), "--to", TODAY.isoformat(), "-o", str(target)]
    )

    assert result.exit_code == 0, result.output
    assert f"Exported 5 bags of {TODAY.isoformat()}..{TODAY.isoformat()} to {target}." in result.output
    rows = rows_of(target.read_text(encoding="utf-8"))
    assert [(row["qr"], row["kind"]) for row in rows[:1]] + [rows[1]["kind"]] == [("SB00003", "parent"), "child"]
    assert [row["qr"] for row in rows if row["kind"] == "parent"] == ["SB00003", "SB00004"]
    parent = rows[0]
    assert parent == {
        "qr": "SB00003", "kind": "parent", "status": "open", "area": "NORTH", "parent": "", "bill_no": "B-1",
        "child_count": "2", "capacity": "30", "created_at": parent["created_at"],
    }  # fmt: skip
    assert parent["created_at"].startswith(TODAY.isoformat()) and parent["created_at"].endswith("Z")
    assert rows[1]["parent"] == "SB00003" and rows[1]["capacity"] == ""
    db.session.rollback()
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "export.bags")).one()
    assert (entry.actor, entry.target) == ("cli", f"{TODAY.isoformat()}..{TODAY.isoformat()}")


def test_cli_exports_old_days_only_and_xlsx_opens(runner, tmp_path, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)
    target = tmp_path / "scans.xlsx"

    result = runner.invoke(
        args=[
            "export",
            "scans",
            "--from",
            OLD.isoformat(),
            "--to",
            OLD.isoformat(),
            "--format",
            "xlsx",
            "-o",
            str(target),
        ]
    )

    assert result.exit_code == 0, result.output
    sheet = load_workbook(target, read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == ("id", "at", "kind", "outcome", "reason", "qr", "parent", "bill_no", "user", "area")
    assert [(row[2], row[5]) for row in rows[1:]] == [
        ("parent", "SB00001"),
        ("child", rows[2][5]),
        ("parent", "SB00002"),
    ]
    assert all(row[1].date() == OLD for row in rows[1:])
    assert [row[0] for row in rows[1:]] == sorted(row[0] for row in rows[1:])


def test_cli_export_to_standard_output_and_bad_dates(runner, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)

    bills = runner.invoke(args=["export", "bills", "-o", "-"])
    backwards = runner.invoke(args=["export", "bags", "--from", "2026-02-02", "--to", "2026-02-01"])
    malformed = runner.invoke(args=["export", "bags", "--from", "2026-2-1"])
    too_long = runner.invoke(args=["export", "bags", "--from", "2024-01-01", "--to", "2025-01-02"])

    assert bills.exit_code == 0
    rows = rows_of(bills.stdout)
    assert [row["bill_no"] for row in rows] == ["B-1"]
    assert rows[0]["parent_count"] == "1" and rows[0]["weight_kg"] == "2.0" and rows[0]["expected_weight_kg"] == "90.0"
    # Text a spreadsheet would run as a formula is exported inert.
    assert rows[0]["description"] == '\'=HYPERLINK("http://evil")'
    assert "Exported 1 bills" in bills.stderr
    for result, message in (
        (backwards, "'from' (2026-02-02) is after 'to' (2026-02-01)."),
        (malformed, "'from' must be a date written YYYY-MM-DD, not '2026-2-1'."),
        (too_long, "An export covers at most 366 days; choose a shorter range."),
    ):
        assert result.exit_code == 1 and result.output == f"Error: {message}\n"


def test_http_export_streams_csv_of_every_area_to_a_biller(login_as, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)
    biller = login_as(make_user("office", role="biller", area=None))

    response = biller.get(f"/exports/bags.csv?from={OLD.isoformat()}&to={TODAY.isoformat()}")

    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="bags-{OLD.isoformat()}-{TODAY.isoformat()}.csv"'
    )
    assert response.headers["Cache-Control"] == "no-store"
    rows = rows_of(response.get_data(as_text=True))
    assert [row["qr"] for row in rows if row["kind"] == "parent"] == ["SB00001", "SB00002", "SB00003", "SB00004"]
    assert {row["area"] for row in rows} == {"NORTH", "SOUTH"}
    assert db.session.scalars(select(AuditEntry.actor).where(AuditEntry.action == "export.bags")).all() == ["office"]


def test_http_export_keeps_a_dispatcher_in_their_area(login_as, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)
    dispatcher = login_as(make_user("south-worker", role="dispatcher", area="SOUTH"))

    # A streamed answer holds its request until it is read: each one is read before the next request.
    bags = dispatcher.get("/exports/bags.csv")
    bag_rows = rows_of(bags.get_data(as_text=True))
    scans = dispatcher.get("/exports/scans.xlsx")
    streamed = scans.is_streamed
    workbook = scans.get_data()
    bills = dispatcher.get("/exports/bills.csv")
    bills_json = dispatcher.get("/exports/bills.xlsx", headers=JSON)

    assert bags.status_code == 200
    assert {row["area"] for row in bag_rows} == {"SOUTH"} and len(bag_rows) == 2
    assert scans.status_code == 200 and streamed
    sheet = load_workbook(io.BytesIO(workbook), read_only=True).active
    scan_rows = list(sheet.iter_rows(values_only=True))[1:]
    assert scan_rows and {row[9] for row in scan_rows} == {"SOUTH"}
    assert bills.status_code == 403
    assert bills_json.status_code == 403 and bills_json.get_json()["error"] == "forbidden"


def test_http_export_refuses_bad_dates_with_400(login_as, make_user):
    admin = login_as(make_user("boss", role="admin", area=None))

    malformed = admin.get("/exports/scans.csv?from=yesterday", headers=JSON)
    too_long = admin.get("/exports/scans.csv?from=2024-01-01&to=2025-06-01")
    unknown = admin.get("/exports/users.csv")

    assert malformed.status_code == 400
    assert malformed.get_json() == {
        "ok": False, "error": "invalid_input", "message": "'from' must be a date written YYYY-MM-DD, not 'yesterday'.",
    }  # fmt: skip
    assert too_long.status_code == 400
    assert "An export covers at most 366 days" in too_long.get_data(as_text=True)
    assert unknown.status_code == 404


def test_export_page_links_what_the_user_may_export(login_as, client, make_user):
    dispatcher = login_as(make_user("north-worker", role="dispatcher", area="NORTH"))
    admin = login_as(make_user("boss", role="admin", area=None))

    dispatcher_page = dispatcher.get("/exports/?from=2026-01-01&to=2026-01-31").get_data(as_text=True)
    admin_page = admin.get("/exports/").get_data(as_text=True)

    assert 'href="/exports/scans.xlsx?from=2026-01-01&amp;to=2026-01-31"' in dispatcher_page
    assert "bills.csv" not in dispatcher_page
    assert 'data-export="bills.csv"' in admin_page
    assert client.get("/exports/bags.csv").status_code == 302


def test_http_export_refuses_days_out_of_range_before_streaming(login_as, make_user):
    admin = login_as(make_user("boss", role="admin", area=None))

    answers = [
        admin.get(f"/exports/{what}?{query}", headers=JSON)
        for what in ("scans.csv", "bags.xlsx")
        for query in ("from=9999-12-01&to=9999-12-31", "from=0001-01-01&to=0001-01-05", "to=0001-01-03",
                      "from=9999-12-31")
    ]  # fmt: skip

    assert [answer.status_code for answer in answers] == [400] * len(answers)
    assert {answer.get_json()["error"] for answer in answers} == {"invalid_input"}
    assert "from 1970-01-01 to 2999-12-31" in answers[0].get_json()["message"]
    assert db.session.scalars(select(AuditEntry.action)).all() == []


def test_cli_export_refuses_days_out_of_range(runner):
    result = runner.invoke(args=["export", "bags", "--from", "9999-12-01"])

    assert result.exit_code == 1
    assert result.output == "Error: 'from' must be a day from 1970-01-01 to 2999-12-31, not 9999-12-01.\n"


def test_csv_exports_neutralise_every_cell_a_spreadsheet_could_run(runner, login_as, make_user, make_bill):
    admin = login_as(make_user("boss", role="admin", area=None))
    make_bill("-A1", destination="Dock 4;=1+1", vehicle_no="@SUM(A1)", description="line one\n-2+3")

    text = admin.get("/exports/bills.csv").get_data(as_text=True)
    cli = runner.invoke(args=["export", "bills", "-o", "-"]).stdout

    assert rows_of(text) == rows_of(cli)
    # Every text field is quoted; where a spreadsheet splitting on ';' or tabs would start a cell, no formula starts.
    assert '"Dock 4;\'=1+1"' in text and '"line one\n\'-2+3"' in text
    assert '"\'-A1"' in text and '"\'@SUM(A1)"' in text
    (row,) = rows_of(text)
    assert (row["bill_no"], row["destination"], row["vehicle_no"]) == ("'-A1", "Dock 4;'=1+1", "'@SUM(A1)")
    # Numbers stay numbers.
    assert '"open",0,10,0,0.0,300.0,' in text
    for separator in (";", "\t"):
        for line in csv.reader(io.StringIO(text), delimiter=separator):
            assert not any(cell.startswith(("=", "+", "-", "@")) for cell in line), line


def test_cli_export_writes_where_output_says(runner, tmp_path, monkeypatch, make_parent, make_user, make_bill):
    site(make_parent, make_user, make_bill)
    monkeypatch.chdir(tmp_path)
    into_directory = tmp_path / "exports"
    into_directory.mkdir()

    default = runner.invoke(args=["export", "bills", "--from", "2026-01-01", "--to", "2026-01-02"])
    directory = runner.invoke(args=["export", "bills", "--from", "2026-01-01", "--to", "2026-01-02", "-o", "exports"])
    named = runner.invoke(args=["export", "bills", "-o", str(tmp_path / "named.csv")])
    nowhere = runner.invoke(args=["export", "bills", "-o", str(tmp_path / "missing" / "bills.csv")])

    assert default.exit_code == 0 and (tmp_path / "bills-2026-01-01-2026-01-02.csv").is_file()
    assert directory.exit_code == 0 and (into_directory / "bills-2026-01-01-2026-01-02.csv").is_file()
    assert named.exit_code == 0 and "B-1" in (tmp_path / "named.csv").read_text()
    assert nowhere.exit_code == 1 and nowhere.output.startswith("Error: cannot write ")
    assert nowhere.output.count("\n") == 1
