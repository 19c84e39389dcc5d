"""``flask import bags|bills`` and the admin's import page: good rows in, bad rows reported by row and code."""

from __future__ import annotations

import csv
import io

from conftest import JSON
from openpyxl import Workbook
from sqlalchemy import func, select

from bagtrack import billing, importing, stats
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
    figures = stats.dashboard_figures(db.session, None)
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
    assert stats.dashboard_figures(db.session, None)["parents"] == {"open": 0, "complete": 2, "billed": 0}


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
    assert (tmp_path / "report.csv").read_text(encoding="utf-8").startswith("row,code,message\n4,invalid_qr,")
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
    figures = stats.dashboard_figures(db.session, None)
    assert figures["bills"] == {"open": 3, "closed": 1}
    assert figures["parents"]["billed"] == 4


def csv_upload(content: str, name: str = "bags.csv") -> dict:
    return {"kind": "bags", "file": (io.BytesIO(content.encode()), name)}


def test_admin_imports_an_upload_over_one_mebibyte(login_as, make_user, make_area):
    make_area("NORTH")
    admin = login_as(make_user("boss", role="admin", area=None))
    # Blank rows are skipped; they make the upload bigger than the 1 MiB other routes accept.
    content = BAG_HEADER + "SB80001,parent,NORTH,\nC8000001,child,,SB80001\nSB8-1,parent,NORTH,\n" + ",,,\n" * 300_000
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
    monkeypatch.setattr(importing, "BULK_ROWS", 1)
    rows = ["SB90001,parent,NORTH,\n"] + [f"C90000{number:02d},child,,SB90001\n" for number in range(30)]
    path = write(tmp_path, "bulk.csv", BAG_HEADER + "".join(rows) + "C9100001,child,,SB10001\n")

    result = runner.invoke(args=["import", "bags", str(path)])

    assert result.exit_code == 0, result.output
    reload()
    assert (bag("SB90001").status, bag("SB10001").child_count) == ("complete", 2)
    assert find_violations(db.session) == []
    assert stats.dashboard_figures(db.session, None)["bags"] == {"parents": 2, "children": 32}
