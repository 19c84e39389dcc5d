"""``flask import bags|bills`` and the admin's import page: good rows in, bad rows reported by row and code."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from helpers import JSON, PASSWORD, log_in
from openpyxl import Workbook
from servers import Gunicorn, http_login
from sqlalchemy import func, select

from bagtrack import billing, importing, stats
from bagtrack.admin import views as admin_views
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import AuditEntry, Bag, Bill, Scan, User

BAG_HEADER = "qr,kind,area,parent\n"
BILL_HEADER = "bill_no,capacity,destination,vehicle_no,description,status,parents\n"


def count(model, *conditions) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*conditions))


def bag(qr: str) -> Bag:
    return db.session.scalars(select(Bag).where(Bag.qr == qr)).one()


def reload() -> None:
    """End the test's transaction and forget what it loaded: the import wrote through another session."""
    db.session.rollback()
    db.session.expire_all()


def factory() -> User:
    return db.session.scalars(select(User).where(User.username == "factory")).one()


def refusals(output: str) -> list[tuple[int, str]]:
    return [
        (int(line.split(":")[0].removeprefix("row ")), line.split(": ")[1])
        for line in output.splitlines()
        if line.startswith("row ")
    ]


def write(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_import_bags_imports_good_rows_and_reports_each_bad_row(runner, tmp_path, make_area, make_parent, make_bill):
    make_area("SOUTH")
    existing = make_parent("SB10001", children=1)
    held_child = db.session.scalar(select(Bag.qr).where(Bag.parent_id == existing.id))
    billed = make_parent("SB10002", children=1)
    make_bill("B-9", capacity=2)
    billing.load_parent(db.session, factory(), "B-9", billed.qr, confirmed=True)
    path = write(
        tmp_path,
        "bags.csv",
        BAG_HEADER
        + "SB20001,parent,NORTH,\n"  # 2
        + "C2000001,child,,SB20001\n"  # 3
        + " c2000002\t, Child ,north, sb20001\n"  # 4: normalised like a scan
        + "C2000003,child,NORTH,SB10001\n"  # 5: into a parent already in bagtrack
        + "C2000004,child,SOUTH,\n"  # 6: loose
        + "SB2-1,parent,NORTH,\n"  # 7
        + "SB20002,child,NORTH,\n"  # 8
        + "SB20003,parent,WEST,\n"  # 9
        + "C2000001,child,,SB20001\n"  # 10
        + "C2000005,child,,SB29999\n"  # 11
        + "C2000006,child,,SB10002\n"  # 12
        + f"{held_child},child,,SB20001\n"  # 13
        + "SB10001,parent,NORTH,\n"  # 14
        + "C2000007,child,SOUTH,SB20001\n"  # 15
        + "\n"  # 16: blank, skipped
        + "SB20004,parent,,\n"  # 17
        + "C2000008,child,NORTH,SB20005\n"  # 18: its parent comes later
        + "SB20005,parent,NORTH,\n",  # 19
    )

    result = runner.invoke(args=["import", "bags", str(path)])

    assert result.exit_code == 2, result.output
    assert refusals(result.output) == [
        (7, "invalid_qr"),
        (8, "wrong_kind"),
        (9, "unknown_area"),
        (10, "duplicate_in_file"),
        (11, "parent_not_found"),
        (12, "parent_on_bill"),
        (13, "child_in_other_parent"),
        (14, "bag_exists"),
        (15, "invalid_input"),
        (17, "invalid_input"),
    ]
    assert f"Imported 7 bags, refused 10 (see {path}.errors.csv)" in result.output
    assert "row 10: duplicate_in_file: Bag C2000001 is already on row 3 of this file." in result.output
    assert f"row 13: child_in_other_parent: Child bag {held_child} is already in parent bag SB10001." in result.output
    with open(f"{path}.errors.csv", newline="", encoding="utf-8") as report:
        rows = list(csv.reader(report))
    assert rows[0] == ["row", "code", "message"]
    assert [(row[0], row[1]) for row in rows[1:]] == [(str(row), code) for row, code in refusals(result.output)]

    reload()
    new_parent = bag("SB20001")
    assert (new_parent.status, new_parent.child_count, new_parent.area.code) == ("open", 2, "NORTH")
    assert bag("C2000002").parent_id == new_parent.id
    assert bag("C2000003").parent_id == existing.id and bag("SB10001").child_count == 2
    loose = bag("C2000004")
    assert (loose.status, loose.parent_id, loose.area.code) == ("loose", None, "SOUTH")
    assert bag("C2000008").parent_id == bag("SB20005").id
    assert count(Bag, Bag.qr.in_(["SB20002", "SB20003", "C2000005", "C2000006", "C2000007", "SB20004"])) == 0
    assert count(Scan, Scan.kind == "parent", Scan.qr.in_(["SB20001", "SB20005"]), Scan.user_id.is_(None)) == 2
    imported_children = ["C2000001", "C2000002", "C2000003", "C2000004", "C2000008"]
    assert count(Scan, Scan.kind == "child", Scan.outcome == "ok", Scan.qr.in_(imported_children)) == 4
    assert find_violations(db.session) == []
    figures = stats.tally_figures(db.session, None)
    assert figures["bags"] == {"parents": 4, "children": 2 + 5}
    assert figures["scans"]["total"] == count(Scan, Scan.outcome == "ok")
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "import.bags")).one()
    assert entry.actor == "cli" and '"imported": 7' in entry.after


def test_import_fills_parents_to_capacity_and_refuses_the_rest(runner, tmp_path, make_parent):
    make_parent("SB10001", children=28)
    rows = [f"C30000{number:02d},child,,SB10001\n" for number in range(3)]
    rows += ["SB30001,parent,NORTH,\n"] + [f"C31000{number:02d},child,,SB30001\n" for number in range(32)]
    path = write(tmp_path, "full.csv", BAG_HEADER + "".join(rows))

    result = runner.invoke(args=["import", "bags", str(path)])

    assert result.exit_code == 2, result.output
    assert refusals(result.output) == [(4, "parent_full"), (36, "parent_full"), (37, "parent_full")]
    assert "row 4: parent_full: Parent bag SB10001 is full (30 children)." in result.output
    reload()
    assert (bag("SB10001").status, bag("SB10001").child_count) == ("complete", 30)
    assert (bag("SB30001").status, bag("SB30001").child_count) == ("complete", 30)
    assert find_violations(db.session) == []
    assert stats.tally_figures(db.session, None)["parents"] == {"open": 0, "complete": 2, "billed": 0}


def test_import_bags_from_xlsx_reads_numbers_as_codes(runner, tmp_path, make_area):
    make_area("NORTH")
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Parent", "QR", "Area", "Kind"])
    sheet.append([None, "SB40001", "NORTH", "parent"])
    sheet.append(["SB40001", 12345678, None, "child"])
    sheet.append([None, "bad code!", "NORTH", "child"])
    path = tmp_path / "bags.xlsx"
    workbook.save(path)

    result = runner.invoke(args=["import", "bags", str(path), "--errors", str(tmp_path / "report.csv")])

    assert result.exit_code == 2, result.output
    assert refusals(result.output) == [(4, "invalid_qr")]
    assert (tmp_path / "report.csv").read_text(encoding="utf-8").startswith('"row","code","message"\n4,"invalid_qr",')
    reload()
    assert bag("12345678").parent_id == bag("SB40001").id
    assert find_violations(db.session) == []


def test_import_prints_progress_and_exits_0_when_every_row_is_imported(runner, tmp_path, make_area):
    make_area("NORTH")
    path = write(tmp_path, "ok.csv", BAG_HEADER + "SB50001,parent,NORTH,\nC5000001,child,,SB50001\n")

    result = runner.invoke(args=["import", "bags", str(path)])

    assert result.exit_code == 0, result.output
    assert "Reading rows" in result.output
    assert "Imported 2 bags, refused 0," in result.output
    assert not (tmp_path / "ok.csv.errors.csv").exists()


def test_import_refuses_a_bad_file_with_one_line_and_imports_nothing(runner, tmp_path, make_area):
    make_area("NORTH")
    wrong_header = write(tmp_path, "wrong.csv", "qr,kind,zone\nSB60001,parent,NORTH\n")
    text_file = write(tmp_path, "bags.txt", BAG_HEADER)
    broken_xlsx = write(tmp_path, "broken.xlsx", "not a workbook")

    for args, message in (
        (["import", "bags", str(tmp_path / "missing.csv")], "missing.csv: no such file."),
        (["import", "bags", str(text_file)], "bags.txt is neither a .csv nor an .xlsx file."),
        (["import", "bags", str(wrong_header)], "Wrong header: the first row must name the columns qr, kind, area,"),
        (["import", "bills", str(wrong_header)], "Wrong header"),
        (["import", "bags", str(broken_xlsx)], "The file is not a readable XLSX workbook."),
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output
    reload()
    assert count(Bag) == 0
    assert not (tmp_path / "wrong.csv.errors.csv").exists()


def test_import_bills_loads_parents_with_the_loading_rules(runner, tmp_path, make_parent, make_bill):
    for qr in ("SB70001", "SB70002", "SB70003", "SB70004", "SB70005", "SB70006"):
        make_parent(qr, children=2)
    make_parent("SB70009")  # empty
    make_bill("B-OLD", capacity=5)
    billing.load_parent(db.session, factory(), "B-OLD", "SB70006", confirmed=True)
    path = write(
        tmp_path,
        "bills.csv",
        BILL_HEADER
        + "b-100,3,Hamburg,trk-1,first truck,open,SB70001 sb70002\n"  # 2
        + 'B-101,2,Lyon,,"two\nlines",closed,SB70003;SB70003\n'  # 3
        + "B-102,5,,,,,\n"  # 4: open and empty
        + "B-OLD,5,,,,,\n"  # 5
        + "B 103,5,,,,,\n"  # 6
        + "B-104,0,,,,,\n"  # 7
        + "B-105,5,,,,shipped,\n"  # 8
        + "B-106,5,,,,closed,\n"  # 9
        + "B-107,5,,,,,SB79999\n"  # 10
        + "B-108,5,,,,,SB70006\n"  # 11
        + "B-109,5,,,,,SB70009\n"  # 12
        + "B-110,1,,,,,SB70004 SB70005\n"  # 13
        + "B-111,5,,,,,SB70001\n"  # 14
        + "B-100,5,,,,,\n"  # 15
        + "B-112,5,,,,,XX\n",  # 16
    )

    result = runner.invoke(args=["import", "bills", str(path)])

    assert result.exit_code == 2, result.output
    assert refusals(result.output) == [
        (5, "bill_exists"),
        (6, "invalid_bill_no"),
        (7, "invalid_input"),
        (8, "invalid_input"),
        (9, "bill_empty"),
        (10, "parent_not_found"),
        (11, "parent_on_other_bill"),
        (12, "parent_empty"),
        (13, "bill_full"),
        (14, "parent_on_other_bill"),
        (15, "duplicate_in_file"),
        (16, "invalid_qr"),
    ]
    assert "row 14: parent_on_other_bill: Parent bag SB70001 is already loaded onto bill B-100 by row 2" in (
        result.output
    )
    reload()
    first = db.session.scalars(select(Bill).where(Bill.bill_no == "B-100")).one()
    assert (first.status, first.parent_count, first.child_count, first.vehicle_no) == ("open", 2, 4, "TRK-1")
    closed = db.session.scalars(select(Bill).where(Bill.bill_no == "B-101")).one()
    assert (closed.status, closed.parent_count, closed.description) == ("closed", 1, "two\nlines")
    assert closed.closed_at is not None
    assert bag("SB70001").bill_id == first.id and bag("SB70004").bill_id is None
    assert count(Scan, Scan.kind == "load", Scan.bill_id.in_([first.id, closed.id]), Scan.user_id.is_(None)) == 3
    assert find_violations(db.session) == []
    figures = stats.tally_figures(db.session, None)
    assert figures["bills"] == {"open": 3, "closed": 1}
    assert figures["parents"]["billed"] == 4


def csv_upload(content: str, name: str = "bags.csv") -> dict:
    return {"kind": "bags", "file": (io.BytesIO(content.encode()), name)}


def test_admin_imports_an_upload_over_one_mebibyte(login_as, make_user, make_area):
    make_area("NORTH")
    admin = login_as(make_user("boss", role="admin", area=None))
    # Blank rows are skipped; they make the upload bigger than the 1 MiB other routes accept.
    blank_rows = ("," * 2000 + "\n") * 600
    content = BAG_HEADER + "SB80001,parent,NORTH,\nC8000001,child,,SB80001\nSB8-1,parent,NORTH,\n" + blank_rows
    assert len(content) > 1024 * 1024

    page = admin.post("/admin/import", data=csv_upload(content), content_type="multipart/form-data")
    answer = admin.post("/admin/import", data=csv_upload(BAG_HEADER + "SB80002,parent,NORTH,\n"), headers=JSON)

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Imported 2 bags, refused 1." in html
    assert 'data-row="4"' in html and "invalid_qr" in html
    assert answer.status_code == 201
    assert answer.get_json()["imported"] == 1 and answer.get_json()["refusals"] == []
    reload()
    assert bag("C8000001").parent_id == bag("SB80001").id
    assert find_violations(db.session) == []
    assert db.session.scalars(select(AuditEntry.actor).where(AuditEntry.action == "import.bags")).all() == ["boss"] * 2


def test_other_routes_refuse_bodies_over_one_mebibyte(login_as, make_user):
    admin = login_as(make_user("boss", role="admin", area=None))

    response = admin.post("/bills", data={"bill_no": "B-1", "capacity": "1", "description": "x" * (1024 * 1024)})

    assert response.status_code == 413


def test_import_page_is_for_admins_and_refuses_a_bad_upload(login_as, make_user):
    biller = login_as(make_user("office", role="biller", area=None))
    admin = login_as(make_user("boss", role="admin", area=None))

    assert biller.get("/admin/import").status_code == 403
    assert admin.get("/admin/import").status_code == 200
    missing = admin.post("/admin/import", data={"kind": "bags"}, headers=JSON)
    wrong = admin.post("/admin/import", data=csv_upload("a,b\n", "bags.txt"), headers=JSON)
    header = admin.post("/admin/import", data=csv_upload("a,b\n"), content_type="multipart/form-data")

    assert (missing.status_code, missing.get_json()["error"]) == (400, "invalid_input")
    assert wrong.get_json()["message"] == "bags.txt is neither a .csv nor an .xlsx file."
    assert header.status_code == 400 and "Wrong header" in header.get_data(as_text=True)


def test_a_bulk_import_checks_foreign_keys_once_and_stays_consistent(runner, tmp_path, make_parent, monkeypatch):
    make_parent("SB10001", children=1)
    # Big imports set the foreign keys aside while they write; here every import counts as big.
    monkeypatch.setattr(importing.bags, "BULK_ROWS", 1)
    rows = ["SB90001,parent,NORTH,\n"] + [f"C90000{number:02d},child,,SB90001\n" for number in range(30)]
    path = write(tmp_path, "bulk.csv", BAG_HEADER + "".join(rows) + "C9100001,child,,SB10001\n")

    result = runner.invoke(args=["import", "bags", str(path)])

    assert result.exit_code == 0, result.output
    reload()
    assert (bag("SB90001").status, bag("SB10001").child_count) == ("complete", 2)
    assert find_violations(db.session) == []
    assert stats.tally_figures(db.session, None)["bags"] == {"parents": 2, "children": 32}


def xlsx_bytes(rows: list[tuple]) -> bytes:
    workbook = Workbook()
    for row in rows:
        workbook.active.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


@pytest.mark.postgres
@pytest.mark.slow
def test_the_import_page_imports_under_gunicorn_with_gevent(database_url, make_user, make_area, tmp_path):
    make_area("NORTH")
    make_user("boss", role="admin", area=None)
    server = Gunicorn(tmp_path / "gunicorn.log", {"DATABASE_URL": database_url, "REDIS_URL": ""}, "-w", "1")
    try:
        admin = http_login(server.base, "boss", PASSWORD)
        bags = admin.post(
            f"{server.base}/admin/import",
            data={"kind": "bags"},
            files={"file": ("bags.csv", BAG_HEADER + "SB70001,parent,NORTH,\nC7000001,child,,SB70001\n")},
            timeout=30,
        )
        sheet = xlsx_bytes([("bill_no", "capacity", "destination", "vehicle_no", "description", "status", "parents"),
                            ("B-70", 2, "Dock 1", "", "", "open", "SB70001")])  # fmt: skip
        bills = admin.post(
            f"{server.base}/admin/import", data={"kind": "bills"}, files={"file": ("bills.xlsx", sheet)}, timeout=30
        )
        page = admin.post(
            f"{server.base}/admin/import",
            data={"kind": "bags"},
            files={"file": ("more.csv", BAG_HEADER + "C7000002,child,NORTH,\n")},
            headers={"Accept": "text/html"},
            timeout=30,
        )
    finally:
        server.kill()

    assert (bags.status_code, bags.json().get("imported")) == (201, 2), bags.text
    assert (bills.status_code, bills.json().get("imported")) == (201, 1), bills.text
    assert page.status_code == 200 and "Imported 1 bags, refused 0." in page.text
    reload()
    assert bag("C7000001").parent_id == bag("SB70001").id and bag("SB70001").child_count == 1
    assert db.session.scalars(select(Bill.parent_count).where(Bill.bill_no == "B-70")).one() == 1
    assert find_violations(db.session) == []


def test_an_unexpected_failure_answers_500_with_an_internal_error_code(make_app, make_user, monkeypatch):
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    with app.app_context():
        admin = log_in(app, make_user("boss", role="admin", area=None))

        def broken(*args, **kwargs):
            raise RuntimeError("the import broke")

        monkeypatch.setitem(admin_views.IMPORTERS, "bags", broken)
        answer = admin.post("/admin/import", data=csv_upload(BAG_HEADER), headers=JSON)
        page = admin.post("/admin/import", data=csv_upload(BAG_HEADER), content_type="multipart/form-data")

    assert answer.status_code == 500
    assert answer.get_json()["error"] == "internal_error" and "the import broke" not in answer.get_data(as_text=True)
    assert page.status_code == 500 and "internal_error" in page.get_data(as_text=True)


@pytest.mark.postgres
def test_seed_import_export_and_prune_run_where_psycopg2_waits_cooperatively(runner, tmp_path):
    """As in a gevent worker: psycopg2 has a wait callback, and COPY refuses to run with one."""
    import psycopg2.extensions
    import psycopg2.extras

    db.engine.dispose()
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        seeded = runner.invoke(args=["seed", "--parents", "3", "--areas", "1"])
        path = write(tmp_path, "bags.csv", BAG_HEADER + "SB90001,parent,A1,\nC9000001,child,,SB90001\n")
        imported = runner.invoke(args=["import", "bags", str(path)])
        exported = runner.invoke(args=["export", "bags", "-o", "-"])
        pruned = runner.invoke(args=["prune", "--older-than", "1"])
    finally:
        psycopg2.extensions.set_wait_callback(None)
        db.session.remove()
        db.engine.dispose()

    assert [result.exit_code for result in (seeded, imported, exported, pruned)] == [0] * 4, imported.output
    assert "Imported 2 bags, refused 0" in imported.output and "C9000001" in exported.stdout
    assert count(Bag) == 2 + count(Bag, Bag.qr.like("SB0%")) + count(Bag, Bag.qr.like("C0%"))
    assert find_violations(db.session) == []


def sheet_xml(rows: list[tuple[int, tuple[str, ...]]], *, dimension: str = "A1:D3", columns=("A", "B", "C", "D"),
              prologue: str = "") -> str:  # fmt: skip
    """A worksheet written by hand, as a hostile file would be: inline strings, any row and column numbers."""

    def cell(column: str, number: int, value: str) -> str:
        return f'<c r="{column}{number}" t="inlineStr"><is><t>{value}</t></is></c>'

    body = "".join(
        f'<row r="{number}">' + "".join(map(cell, columns, [number] * len(values), values)) + "</row>"
        for number, values in rows
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{prologue}<worksheet'
        ' xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f'<dimension ref="{dimension}"/><sheetData>{body}</sheetData></worksheet>'
    )


def workbook_with(sheet: str, **extra_members: bytes) -> bytes:
    """A real workbook whose first sheet is replaced by ``sheet`` (and with ``extra_members`` added)."""
    source = zipfile.ZipFile(io.BytesIO(xlsx_bytes([("qr",)])))
    target = io.BytesIO()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in source.infolist():
            replaced = item.filename == "xl/worksheets/sheet1.xml"
            archive.writestr(item.filename, sheet.encode() if replaced else source.read(item))
        for name, content in extra_members.items():
            archive.writestr(name.replace("__", "/"), content)
    return target.getvalue()


HEADER_ROW = (1, ("qr", "kind", "area", "parent"))


def test_hostile_workbooks_are_refused_before_they_are_read(login_as, make_user, make_area):
    make_area("NORTH")
    admin = login_as(make_user("boss", role="admin", area=None))
    good_row = (2, ("SB60001", "parent", "NORTH", ""))
    hostile = {
        "huge cell": workbook_with(sheet_xml([HEADER_ROW, (2, ("SB60002", "parent", "NORTH", "x" * 300_000))])),
        "huge when unpacked": workbook_with(sheet_xml([HEADER_ROW, good_row]), xl__media__junk_bin=bytes(40 << 20)),
        "row 100,000,000": workbook_with(sheet_xml([HEADER_ROW, good_row, (100_000_000, ("SB60003", "parent"))])),
        "far column": workbook_with(sheet_xml([HEADER_ROW, (2, ("SB60004", "x"))], columns=("A", "XFD"))),
        "entities": workbook_with(sheet_xml([HEADER_ROW, good_row], prologue='<!DOCTYPE x [<!ENTITY a "aaaa">]>')),
    }
    answers = {
        name: admin.post(
            "/admin/import", data={"kind": "bags", "file": (io.BytesIO(content), "bags.xlsx")}, headers=JSON
        )
        for name, content in hostile.items()
    }
    # A sheet claiming rows it does not have (its recorded size) is read by its rows.
    lying = workbook_with(sheet_xml([HEADER_ROW, good_row], dimension="A1:XFD100000000"))
    imported = admin.post(
        "/admin/import", data={"kind": "bags", "file": (io.BytesIO(lying), "bags.xlsx")}, headers=JSON
    )

    assert {name: (answer.status_code, answer.get_json()["error"]) for name, answer in answers.items()} == {
        name: (400, "invalid_input") for name in hostile
    }
    messages = {name: answer.get_json()["message"] for name, answer in answers.items()}
    assert messages["huge cell"] == "A cell of the XLSX workbook holds more than 256 KiB of text."
    assert messages["huge when unpacked"].startswith("The XLSX workbook unpacks to 40 MiB; at most 32 MiB")
    assert messages["row 100,000,000"].startswith("The file has more than 20,000 rows")
    assert messages["far column"] == "The XLSX sheet has cells past column 64."
    assert messages["entities"] == "The XLSX workbook declares XML entities; it is not read."
    assert (imported.status_code, imported.get_json()["imported"]) == (201, 1), imported.get_json()
    assert count(Bag) == 1
    assert db.session.scalars(select(AuditEntry.action)).all() == ["import.bags"]


def test_the_import_page_sends_files_over_its_row_limit_to_the_command_line(make_app, make_user, make_area, tmp_path):
    app = make_app(BAGTRACK_IMPORT_PAGE_MAX_ROWS=5)
    make_area("NORTH")
    rows = "".join(f"SB6{number:04d},parent,NORTH,\n" for number in range(6))
    with app.app_context():
        admin = log_in(app, make_user("boss", role="admin", area=None))
        page = admin.get("/admin/import").get_data(as_text=True)
        too_many = admin.post("/admin/import", data=csv_upload(BAG_HEADER + rows), headers=JSON)
        sheet = xlsx_bytes([HEADER_ROW[1]] + [(f"SB6{number:04d}", "parent", "NORTH", "") for number in range(6)])
        too_many_xlsx = admin.post(
            "/admin/import", data={"kind": "bags", "file": (io.BytesIO(sheet), "bags.xlsx")}, headers=JSON
        )
        five = admin.post("/admin/import", data=csv_upload(BAG_HEADER + rows.split("\n", 1)[1]), headers=JSON)
        six = BAG_HEADER + rows.replace("SB6", "SB7")
        cli = app.test_cli_runner().invoke(args=["import", "bags", str(write(tmp_path, "six.csv", six))])

    assert "This page takes files of up to 5 rows" in page
    for answer in (too_many, too_many_xlsx):
        assert (answer.status_code, answer.get_json()["error"]) == (400, "invalid_input")
        assert answer.get_json()["message"] == (
            "The file has more than 5 rows, more than are imported here. Import larger files on the server with:"
            " flask --app bagtrack import bags|bills FILE"
        )
    assert (five.status_code, five.get_json()["imported"]) == (201, 5)
    assert cli.exit_code == 0 and "Imported 6 bags, refused 0" in cli.output, cli.output
