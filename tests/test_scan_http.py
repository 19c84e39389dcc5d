"""The handheld scanner through HTTP: every scanning rule and error code, as JSON and as pages."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from helpers import JSON, refused_http
from sqlalchemy import select, update

from bagtrack import billing
from bagtrack.extensions import db
from bagtrack.models import Bag, Scan, User, utcnow

CAPACITY = 30


@pytest.fixture
def dispatcher(make_user):
    return make_user("nora", "dispatcher", "NORTH")


@pytest.fixture
def scanner(dispatcher, login_as):
    return login_as(dispatcher)


def bag(qr: str) -> Bag | None:
    """The bag as the database has it now (not as the shared session remembers it)."""
    return db.session.scalars(select(Bag).where(Bag.qr == qr).execution_options(populate_existing=True)).one_or_none()


def factory() -> User:
    return db.session.scalars(select(User).where(User.username == "factory")).one()


def scan_child(client, parent: str, qr: str, **extra):
    return client.post("/scan/child", data={"parent": parent, "qr": qr, **extra}, headers=JSON)


def load_on_bill(make_bill, parent: Bag, bill_no: str = "B-1") -> None:
    make_bill(bill_no)
    billing.load_parent(db.session, factory(), bill_no, parent.qr, confirmed=True)


# Access -------------------------------------------------------------------


def test_anonymous_is_sent_to_login_or_told_401(client):
    page = client.get("/scan?parent=SB00001")
    assert page.status_code == 302
    assert page.location.startswith("/login?next=")
    client.fetch_csrf_token()
    for path in ("/scan/parent", "/scan/child", "/scan/undo"):
        response = client.post(path, data={"qr": "SB00001", "parent": "SB00001"}, headers=JSON)
        refused_http(response, 401, "login_required")
    assert db.session.scalar(select(Scan.id)) is None


def test_missing_csrf_token_is_refused(scanner):
    scanner.csrf_token = None
    refused_http(scanner.post("/scan/parent", data={"qr": "SB00001"}, headers=JSON), 400, "csrf_failed")
    page = scanner.post("/scan/parent", data={"qr": "SB00001"})
    assert page.status_code == 400
    assert 'data-error="csrf_failed"' in page.get_data(as_text=True)
    assert bag("SB00001") is None


# Scan parent ----------------------------------------------------------------


def test_new_parent_is_created_then_resumed(scanner):
    created = scanner.post("/scan/parent", data={"qr": "sb00001\r\n"}, headers=JSON)
    assert created.status_code == 201
    body = created.get_json()
    assert body["ok"] is True and body["created"] is True
    assert body["parent"] == {
        "qr": "SB00001",
        "status": "open",
        "child_count": 0,
        "capacity": CAPACITY,
        "area": "NORTH",
        "bill_no": None,
    }
    assert body["children"] == []

    scan_child(scanner, "SB00001", "C0001")
    resumed = scanner.post("/scan/parent", data={"qr": "SB00001"}, headers=JSON)
    assert resumed.status_code == 200
    assert resumed.get_json()["created"] is False
    assert resumed.get_json()["parent"]["child_count"] == 1
    assert resumed.get_json()["children"] == ["C0001"]


def test_parent_scan_without_javascript_redirects_to_the_scanner(scanner):
    response = scanner.post("/scan/parent", data={"qr": "SB00001"})
    assert response.status_code == 303
    assert response.location == "/scan?parent=SB00001"
    page = scanner.get(response.location).get_data(as_text=True)
    assert "New parent bag SB00001 started in area NORTH." in page
    assert 'id="scan-count">0</span>/<span id="scan-capacity">30' in page
    assert '<input type="hidden" name="parent" value="SB00001">' in page


def test_dispatcher_parent_goes_to_own_area_whatever_area_is_posted(scanner, make_area):
    make_area("SOUTH")
    body = scanner.post("/scan/parent", data={"qr": "SB00001", "area": "SOUTH"}, headers=JSON).get_json()
    assert body["parent"]["area"] == "NORTH"


def test_biller_must_choose_the_area_of_a_new_parent(make_user, make_area, login_as):
    make_area("SOUTH")
    biller = login_as(make_user("bill", "biller", None))
    refused_http(biller.post("/scan/parent", data={"qr": "SB00001"}, headers=JSON), 400, "invalid_input")
    refused_http(
        biller.post("/scan/parent", data={"qr": "SB00001", "area": "WEST"}, headers=JSON), 400, "invalid_input"
    )
    assert bag("SB00001") is None
    created = biller.post("/scan/parent", data={"qr": "SB00001", "area": "south"}, headers=JSON)
    assert created.status_code == 201
    assert created.get_json()["parent"]["area"] == "SOUTH"
    # Resuming needs no area.
    assert biller.post("/scan/parent", data={"qr": "SB00001"}, headers=JSON).status_code == 200


def test_scanner_page_offers_an_area_choice_only_to_billers(make_user, make_area, login_as, scanner):
    make_area("SOUTH")
    biller = login_as(make_user("bill", "biller", None))
    biller_page = biller.get("/scan").get_data(as_text=True)
    assert '<select name="area">' in biller_page
    assert '<option value="SOUTH"' in biller_page
    dispatcher_page = scanner.get("/scan").get_data(as_text=True)
    assert '<select name="area">' not in dispatcher_page
    assert 'id="parent-qr"' in dispatcher_page and "autofocus" in dispatcher_page


def test_parent_of_another_area_is_not_found_for_a_dispatcher(scanner, make_parent):
    south = make_parent("SB00009", area="SOUTH", children=1)
    refused_http(scanner.post("/scan/parent", data={"qr": south.qr}, headers=JSON), 404, "parent_not_found")
    refused_http(scan_child(scanner, south.qr, "C0001"), 404, "parent_not_found")
    refused_http(scanner.post("/scan/undo", data={"parent": south.qr}, headers=JSON), 404, "parent_not_found")
    page = scanner.get(f"/scan?parent={south.qr}")
    assert page.status_code == 404
    assert 'id="parent-qr"' in page.get_data(as_text=True)
    assert bag(south.qr).child_count == 1 and bag("C0001") is None


@pytest.mark.parametrize(
    ("qr", "normalised"),
    [("sb00001\r\n", "SB00001"), ("\u200bSB00001", "SB00001"), ("\tSB000\u200d01\ufeff", "SB00001")],
)
def test_control_and_zero_width_characters_are_dropped(scanner, qr, normalised):
    response = scanner.post("/scan/parent", data={"qr": qr}, headers=JSON)
    assert response.status_code == 201
    assert response.get_json()["parent"]["qr"] == normalised


@pytest.mark.parametrize("qr", ["SB\uff10\uff10\uff1001", "SB 00001", "", "SB-0001", "x" * 65])
def test_invalid_parent_codes_are_invalid_qr(scanner, qr):
    body = refused_http(scanner.post("/scan/parent", data={"qr": qr}, headers=JSON), 400, "invalid_qr")
    assert "A parent bag code looks like SB00001" in body["message"]
    assert db.session.scalar(select(Bag.id)) is None


def test_missing_and_oversized_fields_are_clean_4xx(scanner, make_user, login_as):
    refused_http(scanner.post("/scan/parent", data={}, headers=JSON), 400, "invalid_qr")
    refused_http(scanner.post("/scan/child", data={}, headers=JSON), 400, "invalid_qr")
    refused_http(scanner.post("/scan/undo", data={}, headers=JSON), 400, "invalid_qr")
    refused_http(scanner.post("/scan/parent", data={"qr": "A" * 50_000}, headers=JSON), 400, "invalid_qr")
    refused_http(scan_child(scanner, "SB00001", "\x00" * 10_000 + "C0001" * 1000), 400, "invalid_qr")
    biller = login_as(make_user("bill", "biller", None))
    refused_http(
        biller.post("/scan/parent", data={"qr": "SB00001", "area": "N" * 50_000}, headers=JSON), 400, "invalid_input"
    )
    too_large = scanner.post("/scan/parent", data={"qr": "A" * (2 * 1024 * 1024)}, headers=JSON)
    assert too_large.status_code == 413
    assert too_large.get_json()["error"] == "too_large"


def test_a_file_where_a_code_belongs_is_no_code(scanner):
    from io import BytesIO

    response = scanner.post(
        "/scan/parent", data={"qr": (BytesIO(b"SB00001"), "qr.txt")}, headers=JSON, content_type="multipart/form-data"
    )
    refused_http(response, 400, "invalid_qr")


# Scan child -----------------------------------------------------------------


def test_unknown_child_is_created_and_linked(scanner, make_parent):
    parent = make_parent("SB00001")
    response = scan_child(scanner, "SB00001", "c0001\n")
    assert response.status_code == 201
    body = response.get_json()
    assert body["ok"] is True and body["created"] is True and body["duplicate"] is False
    assert body["child"] == {"qr": "C0001", "status": "packed"}
    assert body["parent"]["child_count"] == 1 and body["parent"]["status"] == "open"
    assert "children" not in body  # the scanner page adds the one child itself
    assert scanner.get("/api/bags/SB00001").get_json()["children"] == ["C0001"]
    child = bag("C0001")
    assert child.parent_id == parent.id and child.area_id == parent.area_id


def test_known_loose_child_is_linked_with_200(scanner, make_parent):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON)
    assert bag("C0001").status == "loose"
    response = scan_child(scanner, "SB00001", "C0001")
    assert response.status_code == 200
    assert response.get_json()["created"] is False and response.get_json()["child"]["status"] == "packed"


def test_child_scan_without_javascript_redirects_with_the_count(scanner, make_parent):
    make_parent("SB00001")
    response = scanner.post("/scan/child", data={"parent": "SB00001", "qr": "C0001"})
    assert response.status_code == 303 and response.location == "/scan?parent=SB00001"
    page = scanner.get(response.location).get_data(as_text=True)
    assert "C0001 added: 1/30." in page
    assert "feedback-ok" in page
    assert "<li>C0001</li>" in page


def test_duplicate_is_a_success_that_changes_nothing(scanner, make_parent):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    response = scan_child(scanner, "SB00001", "C0001")
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True and body["duplicate"] is True and body["created"] is False
    assert body["parent"]["child_count"] == 1
    assert "already in this parent" in body["message"]
    page = scanner.post("/scan/child", data={"parent": "SB00001", "qr": "C0001"}, follow_redirects=True)
    assert page.status_code == 200
    assert "C0001 is already in this parent (1/30)." in page.get_data(as_text=True)


def test_duplicate_on_a_full_parent_is_still_a_success(scanner, make_parent):
    parent = make_parent("SB00001", children=CAPACITY - 1)
    scan_child(scanner, parent.qr, "C0001")
    assert bag(parent.qr).status == "complete"
    response = scan_child(scanner, parent.qr, "C0001")
    assert response.status_code == 200 and response.get_json()["duplicate"] is True


def test_duplicate_on_a_billed_parent_is_still_a_success(scanner, make_parent, make_bill):
    parent = make_parent("SB00001", children=1)
    child_qr = db.session.scalar(select(Bag.qr).where(Bag.parent_id == parent.id))
    load_on_bill(make_bill, parent)
    response = scan_child(scanner, parent.qr, child_qr)
    assert response.status_code == 200
    assert response.get_json()["duplicate"] is True
    assert response.get_json()["parent"]["bill_no"] == "B-1"


def test_parent_on_a_bill_takes_no_new_children(scanner, make_parent, make_bill):
    parent = make_parent("SB00001", children=1)
    load_on_bill(make_bill, parent)
    refused_http(scan_child(scanner, parent.qr, "C0001"), 409, "parent_on_bill")
    assert bag("C0001") is None
    assert bag(parent.qr).child_count == 1


def test_child_in_another_parent_names_it(scanner, make_parent):
    make_parent("SB00001")
    make_parent("SB00002")
    scan_child(scanner, "SB00001", "C0001")
    body = refused_http(scan_child(scanner, "SB00002", "C0001"), 409, "child_in_other_parent")
    assert "SB00001" in body["message"]
    assert bag("SB00002").child_count == 0


def test_child_in_another_area_does_not_name_the_parent(scanner, make_parent):
    south = make_parent("SB00009", area="SOUTH", children=1)
    south_child = db.session.scalar(select(Bag.qr).where(Bag.parent_id == south.id))
    make_parent("SB00001")
    body = refused_http(scan_child(scanner, "SB00001", south_child), 409, "child_in_other_parent")
    assert "another area" in body["message"]
    assert "SB00009" not in body["message"]


def test_full_parent_refuses_another_child(scanner, make_parent):
    parent = make_parent("SB00001", children=CAPACITY)
    refused_http(scan_child(scanner, parent.qr, "C0001"), 409, "parent_full")
    assert bag(parent.qr).child_count == CAPACITY


def test_the_thirtieth_child_completes_the_parent_in_the_same_request(scanner, make_parent):
    parent = make_parent("SB00001", children=CAPACITY - 1)
    response = scan_child(scanner, parent.qr, "C0001")
    assert response.status_code == 201
    assert response.get_json()["parent"]["status"] == "complete"
    assert response.get_json()["parent"]["child_count"] == CAPACITY
    assert "is complete (30/30)" in response.get_json()["message"]
    assert bag(parent.qr).status == "complete"


@pytest.mark.parametrize("qr", ["C\uff10\uff10\uff101", "C 0001", "ABC", "A-0001"])
def test_invalid_child_codes_are_invalid_qr(scanner, make_parent, qr):
    make_parent("SB00001")
    refused_http(scan_child(scanner, "SB00001", qr), 400, "invalid_qr")


def test_control_characters_inside_a_child_code_are_dropped(scanner, make_parent):
    make_parent("SB00001")
    response = scan_child(scanner, "SB00001", "\u200bc00\t01\r\n")
    assert response.status_code == 201
    assert response.get_json()["child"]["qr"] == "C0001"


def test_wrong_kind_both_ways(scanner, make_parent):
    make_parent("SB00001")
    refused_http(scanner.post("/scan/parent", data={"qr": "C0001"}, headers=JSON), 409, "wrong_kind")
    refused_http(scan_child(scanner, "SB00001", "SB00002"), 409, "wrong_kind")
    refused_http(scan_child(scanner, "C0001", "C0002"), 409, "wrong_kind")
    assert bag("SB00002") is None and bag("C0002") is None


def test_unknown_parent_is_not_found(scanner):
    refused_http(scan_child(scanner, "SB00404", "C0001"), 404, "parent_not_found")
    assert bag("C0001") is None


def test_refusal_page_keeps_the_parent_and_shows_red(scanner, make_parent):
    make_parent("SB00001", children=CAPACITY)
    page = scanner.post("/scan/child", data={"parent": "SB00001", "qr": "C0001"})
    assert page.status_code == 409
    html = page.get_data(as_text=True)
    assert 'class="feedback feedback-error scan-feedback"' in html
    assert 'data-error="parent_full"' in html
    assert "Parent bag SB00001 is complete (30/30)." in html
    assert '<input type="hidden" name="parent" value="SB00001">' in html
    assert 'id="child-qr"' in html


def test_refusal_page_for_an_unknown_parent_asks_for_a_parent(scanner):
    page = scanner.post("/scan/child", data={"parent": "SB00404", "qr": "C0001"})
    assert page.status_code == 404
    html = page.get_data(as_text=True)
    assert 'data-error="parent_not_found"' in html
    assert '<section id="scan-parent" class="scan-parent" hidden' in html


# Switching parent from the child box -------------------------------------------


def test_parent_code_in_the_child_box_switches_parent(scanner, make_parent):
    make_parent("SB00001")
    response = scan_child(scanner, "SB00001", "sb00002", switch="1")
    assert response.status_code == 201
    body = response.get_json()
    assert body["switched"] is True and body["created"] is True
    assert body["parent"]["qr"] == "SB00002" and body["children"] == []
    page = scanner.post("/scan/child", data={"parent": "SB00002", "qr": "SB00001", "switch": "1"})
    assert page.status_code == 303 and page.location == "/scan?parent=SB00001"


def test_switching_to_a_parent_of_another_area_keeps_the_current_one(scanner, make_parent):
    make_parent("SB00001")
    make_parent("SB00009", area="SOUTH")
    refused_http(scan_child(scanner, "SB00001", "SB00009", switch="1"), 404, "parent_not_found")
    page = scanner.post("/scan/child", data={"parent": "SB00001", "qr": "SB00009", "switch": "1"})
    assert page.status_code == 404
    assert '<input type="hidden" name="parent" value="SB00001">' in page.get_data(as_text=True)


def test_biller_switching_to_a_new_parent_keeps_the_area_of_the_current_one(make_user, make_parent, login_as):
    make_parent("SB00009", area="SOUTH")
    biller = login_as(make_user("bill", "biller", None))
    page = biller.get("/scan?parent=SB00009").get_data(as_text=True)
    assert '<input type="hidden" name="area" value="SOUTH">' in page
    response = scan_child(biller, "SB00009", "SB00010", switch="1", area="SOUTH")
    assert response.status_code == 201
    assert response.get_json()["parent"]["area"] == "SOUTH"


# Undo -------------------------------------------------------------------------


def test_undo_takes_out_the_latest_child_of_this_user(scanner, make_parent):
    parent = make_parent("SB00001")
    scan_child(scanner, parent.qr, "C0001")
    scan_child(scanner, parent.qr, "C0002")
    response = scanner.post("/scan/undo", data={"parent": parent.qr}, headers=JSON)
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True
    assert body["child"] == {"qr": "C0002", "status": "loose"}
    assert body["parent"]["child_count"] == 1
    assert scanner.get(f"/api/bags/{parent.qr}").get_json()["children"] == ["C0001"]
    assert bag("C0002").parent_id is None
    undo = db.session.scalars(select(Scan).where(Scan.kind == "undo")).one()
    assert undo.outcome == "ok" and undo.qr == "C0002"


def test_undo_without_javascript_redirects_with_a_message(scanner, make_parent):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    response = scanner.post("/scan/undo", data={"parent": "SB00001"}, follow_redirects=True)
    assert response.status_code == 200
    assert "Took C0001 out of SB00001: 0/30." in response.get_data(as_text=True)


def test_nothing_to_undo(scanner, make_parent):
    make_parent("SB00001")
    refused_http(scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON), 409, "nothing_to_undo")
    page = scanner.post("/scan/undo", data={"parent": "SB00001"})
    assert page.status_code == 409
    assert 'data-error="nothing_to_undo"' in page.get_data(as_text=True)


def test_another_users_scan_cannot_be_undone(scanner, make_parent, make_user, login_as):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    colleague = login_as(make_user("olaf", "dispatcher", "NORTH"))
    refused_http(colleague.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON), 409, "nothing_to_undo")
    assert bag("C0001").status == "packed"


def test_undo_window_expires(scanner, make_parent):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    db.session.execute(update(Bag).where(Bag.qr == "C0001").values(linked_at=utcnow() - timedelta(seconds=601)))
    db.session.commit()
    refused_http(scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON), 409, "nothing_to_undo")
    assert bag("C0001").status == "packed"


def test_undo_window_follows_the_setting(scanner, make_parent, app, monkeypatch):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    monkeypatch.setitem(app.config, "BAGTRACK_UNDO_WINDOW_S", 0)
    refused_http(scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON), 409, "nothing_to_undo")


def test_undo_reopens_a_complete_parent(scanner, make_parent):
    parent = make_parent("SB00001", children=CAPACITY - 1)
    scan_child(scanner, parent.qr, "C0001")
    response = scanner.post("/scan/undo", data={"parent": parent.qr}, headers=JSON)
    assert response.status_code == 200
    assert response.get_json()["parent"]["status"] == "open"
    assert response.get_json()["parent"]["child_count"] == CAPACITY - 1
    assert bag(parent.qr).status == "open"


def test_undo_on_a_billed_parent_is_refused(scanner, make_parent, make_bill):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    load_on_bill(make_bill, bag("SB00001"))
    refused_http(scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON), 409, "parent_on_bill")
    assert bag("C0001").status == "packed"


# The scan log -------------------------------------------------------------------


def test_refused_scans_are_logged_with_their_reason(scanner, make_parent):
    make_parent("SB00001", children=CAPACITY)
    scan_child(scanner, "SB00001", "C0001")
    scanner.post("/scan/parent", data={"qr": "SB\uff10"}, headers=JSON)
    scanner.post("/scan/undo", data={"parent": "SB00001"}, headers=JSON)
    rows = db.session.execute(
        select(Scan.kind, Scan.outcome, Scan.reason).where(Scan.outcome == "rejected").order_by(Scan.id)
    ).all()
    assert [tuple(row) for row in rows] == [
        ("child", "rejected", "parent_full"),
        ("parent", "rejected", "invalid_qr"),
        ("undo", "rejected", "nothing_to_undo"),
    ]
    log = scanner.get("/scans").get_data(as_text=True)
    assert "rejected: parent_full" in log
    assert "rejected: invalid_qr" in log
    assert "rejected: nothing_to_undo" in log
    assert log.count('<tr class="rejected"') == 3


def test_duplicates_are_logged_as_accepted_scans(scanner, make_parent):
    make_parent("SB00001")
    scan_child(scanner, "SB00001", "C0001")
    scan_child(scanner, "SB00001", "C0001")
    rows = db.session.execute(
        select(Scan.outcome, Scan.reason).where(Scan.kind == "child", Scan.qr == "C0001").order_by(Scan.id)
    ).all()
    assert [tuple(row) for row in rows] == [("ok", None), ("ok", "duplicate")]


# The page and its script ---------------------------------------------------------


def test_scanner_page_loads_its_script_without_inline_code(scanner, make_parent):
    make_parent("SB00001", children=2)
    html = scanner.get("/scan?parent=SB00001").get_data(as_text=True)
    assert re.search(r'<script src="/static/floor\.js(\?v=\w+)?" defer></script>', html)
    assert re.search(r'<script src="/static/scan\.js(\?v=\w+)?" defer></script>', html)
    assert "<script>" not in html and "style=" not in html and " onclick=" not in html
    assert html.count("autofocus") == 1
    assert 'id="scan-count">2</span>' in html
    script = scanner.get("/static/floor.js")
    assert script.status_code == 200
    assert b"X-CSRFToken" in script.data and b"localStorage" in script.data
    assert 'id="queue-box"' in html and "Refused after reconnect" in html
