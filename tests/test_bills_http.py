"""Bills over HTTP: every rule and error code of PRODUCT.md, in HTML and JSON."""

from __future__ import annotations

import pytest
from helpers import JSON, refused_http
from sqlalchemy import func, select

from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, Bill, Scan


@pytest.fixture
def biller(make_user, login_as):
    return login_as(make_user("office", role="biller", area=None))


def new_bill(client, **fields):
    form = {"bill_no": "B-1", "capacity": "10", "destination": "Depot", "vehicle_no": "ab 123", **fields}
    return client.post("/bills", data=form, headers=JSON)


def load(client, bill_no, qr, headers=JSON, confirm="1"):
    form = {"qr": qr} if confirm is None else {"qr": qr, "confirm": confirm}
    return client.post(f"/bills/{bill_no}/parents", data=form, headers=headers)


def refused(response, status, code) -> str:
    return refused_http(response, status, code)["message"]


# Creating bills


def test_create_bill_answers_201_with_the_bill(biller):
    response = new_bill(biller, bill_no="b-1\t", capacity="3", description="Fragile")
    assert response.status_code == 201
    bill = response.get_json()["bill"]
    assert response.get_json()["ok"] is True
    assert bill["bill_no"] == "B-1"
    assert bill["status"] == "open"
    assert (bill["parent_count"], bill["capacity"], bill["child_count"]) == (0, 3, 0)
    assert bill["weight_kg"] == 0
    assert bill["expected_weight_kg"] == 90.0
    row = db.session.scalar(select(Bill).where(Bill.bill_no == "B-1"))
    assert (row.destination, row.vehicle_no, row.description) == ("Depot", "AB 123", "Fragile")
    assert db.session.scalar(select(AuditEntry.action).where(AuditEntry.target == "B-1")) == "bill.create"


def test_create_bill_in_a_browser_redirects_to_the_bill(biller):
    response = biller.post("/bills", data={"bill_no": " b-7 ", "capacity": "2"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/bills/B-7")
    page = biller.get(response.headers["Location"]).get_data(as_text=True)
    assert "Bill B-7 created." in page
    assert "0/2" in page


@pytest.mark.parametrize(
    "bill_no",
    ["", "   ", "B 1", "B_1", "B/1", "BÜ1", "\uff221", "X" * 51],
    ids=["empty", "blank", "space", "underscore", "slash", "non-ascii", "full-width", "too-long"],
)
def test_bad_bill_numbers_are_invalid_bill_no(biller, bill_no):
    refused(new_bill(biller, bill_no=bill_no), 400, "invalid_bill_no")
    assert db.session.scalar(select(func.count()).select_from(Bill)) == 0


def test_bill_numbers_are_normalised_and_may_be_50_long(biller):
    assert new_bill(biller, bill_no="x" * 50).get_json()["bill"]["bill_no"] == "X" * 50
    assert new_bill(biller, bill_no="\u200bb-2\r\n").get_json()["bill"]["bill_no"] == "B-2"


def test_an_existing_bill_number_is_bill_exists(biller):
    new_bill(biller, bill_no="B-1")
    message = refused(new_bill(biller, bill_no="b-1 "), 409, "bill_exists")
    assert "B-1" in message


@pytest.mark.parametrize("capacity", ["0", "501", "abc", "", "1.5", "-3"])
def test_bad_capacity_is_invalid_input(biller, capacity):
    refused(new_bill(biller, capacity=capacity), 400, "invalid_input")


def test_missing_capacity_is_invalid_input(biller):
    response = biller.post("/bills", data={"bill_no": "B-1"}, headers=JSON)
    refused(response, 400, "invalid_input")


def test_capacity_bounds_are_accepted(biller):
    assert new_bill(biller, bill_no="B-1", capacity="1").status_code == 201
    assert new_bill(biller, bill_no="B-2", capacity="500").status_code == 201


def test_too_long_destination_is_invalid_input(biller):
    refused(new_bill(biller, destination="D" * 201), 400, "invalid_input")


def test_a_refused_bill_re_renders_the_list_with_what_was_typed(biller):
    response = biller.post("/bills", data={"bill_no": "B 1", "capacity": "4", "destination": "Port Louis"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "A bill number is 1 to 50 characters" in page
    assert 'value="B 1"' in page and 'value="Port Louis"' in page and 'value="4"' in page


# The bill list


def test_bill_list_is_newest_first_with_status_filter_and_pages(app, biller, make_bill, make_parent):
    app.config["BAGTRACK_PAGE_SIZE"] = 2
    for number in range(1, 6):
        make_bill(f"B-{number}", capacity=5, vehicle_no=f"TRUCK{number}")
    parent = make_parent(children=2)
    load(biller, "B-2", parent.qr)
    biller.post("/bills/B-2/close", headers=JSON)

    first = biller.get("/bills").get_data(as_text=True)
    assert first.index(">B-5<") < first.index(">B-4<")
    assert ">B-3<" not in first
    assert "TRUCK5" in first and "Depot" in first and "0/5" in first
    older = first.split('class="pager"')[1]
    second_url = older.split('href="')[1].split('"')[0].replace("&amp;", "&")
    second = biller.get(second_url).get_data(as_text=True)
    assert ">B-3<" in second and ">B-2<" in second and ">B-5<" not in second
    assert "1/5" in second and "2.0 kg" in second

    closed = biller.get("/bills?status=closed").get_data(as_text=True)
    assert ">B-2<" in closed and ">B-5<" not in closed
    opened = biller.get("/bills?status=open").get_data(as_text=True)
    assert ">B-2<" not in opened and ">B-5<" in opened


def test_a_malformed_page_cursor_is_400(biller):
    assert biller.get("/bills?before=abc").status_code == 400


# One bill's page


def test_bill_page_shows_figures_parents_and_scans(biller, make_bill, make_parent):
    make_bill("B-1", capacity=4, vehicle_no="KA01", description="Handle with care")
    parent = make_parent(children=7)
    load(biller, "B-1", parent.qr)
    page = biller.get("/bills/b-1")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Bill B-1" in html
    assert '<span data-field="parent_count">1</span>/<span data-field="capacity">4</span>' in html
    assert '<dd data-field="child_count">7</dd>' in html
    assert '<span data-field="weight_kg">7.0</span>' in html
    assert '<span data-field="expected_weight_kg">120.0</span>' in html
    assert "KA01" in html and "Depot" in html and "Handle with care" in html
    assert f"/bills/B-1/parents/{parent.qr}/remove" in html
    assert "7/30" in html
    assert 'name="qr" autofocus' in html
    assert "bills.js" in html and "<script>" not in html
    assert html.count("<td>load</td>") == 1


def test_closed_bill_page_offers_reopen_and_no_remove(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=1)
    load(biller, "B-1", parent.qr)
    biller.post("/bills/B-1/close", headers=JSON)
    html = biller.get("/bills/B-1").get_data(as_text=True)
    assert "/bills/B-1/reopen" in html
    assert "/bills/B-1/close" not in html
    assert "/remove" not in html
    assert 'id="load-form"' not in html and "/bills/B-1/parents" not in html
    assert "This bill is closed: reopen it to load or remove parent bags." in html


def test_open_bill_page_asks_before_remove_and_close(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=1)
    load(biller, "B-1", parent.qr)
    html = biller.get("/bills/B-1").get_data(as_text=True)
    assert 'id="load-form"' in html
    assert f'data-confirm="Take parent bag {parent.qr} off bill B-1?"' in html
    assert 'data-confirm="Close bill B-1?' in html


def test_a_parent_that_is_not_complete_needs_a_confirmation(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=2)
    message = refused(load(biller, "B-1", parent.qr, confirm=None), 409, "parent_not_complete")
    assert message == f"Parent bag {parent.qr} is not complete (2/30). Load it anyway?"
    page = load(biller, "B-1", parent.qr, headers={}, confirm="0")
    assert page.status_code == 409
    html = page.get_data(as_text=True)
    assert 'data-error="parent_not_complete"' in html
    assert f'<input type="hidden" name="qr" value="{parent.qr}">' in html
    assert '<input type="hidden" name="confirm" value="1">' in html
    assert f"Load {parent.qr} anyway" in html
    assert db.session.scalar(select(Bill.parent_count).where(Bill.bill_no == "B-1")) == 0
    assert load(biller, "B-1", parent.qr, headers={}).status_code == 303
    db.session.expire_all()
    assert db.session.scalar(select(Bill.parent_count).where(Bill.bill_no == "B-1")) == 1


def test_unknown_bill_page_is_404(biller):
    response = biller.get("/bills/NOPE")
    assert response.status_code == 404
    assert "Bill NOPE was not found." in response.get_data(as_text=True)
    refused(biller.get("/bills/NOPE", headers=JSON), 404, "bill_not_found")


# Loading parents


def test_loading_a_parent_updates_the_bill(biller, make_bill, make_parent):
    make_bill("B-1", capacity=2)
    parent = make_parent(children=5)
    response = load(biller, "b-1", f" {parent.qr.lower()}\r\n")
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True and body["duplicate"] is False
    assert body["bill"]["parent_count"] == 1
    assert body["bill"]["child_count"] == 5
    assert body["bill"]["weight_kg"] == 5.0
    assert body["bill"]["expected_weight_kg"] == 60.0
    assert body["parent"] == {
        "qr": parent.qr,
        "status": "open",
        "child_count": 5,
        "capacity": 30,
        "area": "NORTH",
        "bill_no": "B-1",
    }
    assert db.session.scalar(select(Bag.bill_id).where(Bag.qr == parent.qr)) is not None


def test_loading_in_a_browser_redirects_back_with_a_flash(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=1)
    response = load(biller, "B-1", parent.qr, headers={})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/bills/B-1")
    page = biller.get("/bills/B-1").get_data(as_text=True)
    assert f"Loaded parent bag {parent.qr}: 1/10 on bill B-1." in page


def test_a_refused_load_in_a_browser_re_renders_the_bill_page(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent()
    response = load(biller, "B-1", parent.qr, headers={})
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert f"Parent bag {parent.qr} is empty; fill it before loading." in html
    assert 'data-error="parent_empty"' in html
    assert "Bill B-1" in html and 'name="qr" autofocus' in html


def test_invalid_code_is_invalid_qr(biller, make_bill):
    make_bill("B-1")
    message = refused(load(biller, "B-1", "not a code!"), 400, "invalid_qr")
    assert message.startswith("This is not a bag code")
    refused(load(biller, "B-1", ""), 400, "invalid_qr")


def test_a_child_code_is_wrong_kind(biller, make_bill):
    make_bill("B-1")
    refused(load(biller, "B-1", "ABC123"), 409, "wrong_kind")


def test_unknown_bill_is_bill_not_found(biller, make_parent):
    parent = make_parent(children=1)
    refused(load(biller, "NOPE", parent.qr), 404, "bill_not_found")
    response = load(biller, "NOPE", parent.qr, headers={})
    assert response.status_code == 404
    assert "Bill NOPE was not found." in response.get_data(as_text=True)


def test_unknown_parent_is_parent_not_found_and_not_created(biller, make_bill):
    make_bill("B-1")
    refused(load(biller, "B-1", "SB99999"), 404, "parent_not_found")
    assert db.session.scalar(select(Bag).where(Bag.qr == "SB99999")) is None


def test_loading_twice_is_a_duplicate_success(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=3)
    load(biller, "B-1", parent.qr)
    response = load(biller, "B-1", parent.qr)
    assert response.status_code == 200
    body = response.get_json()
    assert body["duplicate"] is True
    assert (body["bill"]["parent_count"], body["bill"]["child_count"]) == (1, 3)


def test_duplicate_succeeds_even_on_a_closed_bill(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=3)
    load(biller, "B-1", parent.qr)
    biller.post("/bills/B-1/close", headers=JSON)
    body = load(biller, "B-1", parent.qr).get_json()
    assert body["ok"] is True and body["duplicate"] is True
    assert body["bill"]["status"] == "closed"


def test_duplicate_succeeds_even_on_a_full_bill(biller, make_bill, make_parent):
    make_bill("B-1", capacity=1)
    parent = make_parent(children=3)
    load(biller, "B-1", parent.qr)
    body = load(biller, "B-1", parent.qr).get_json()
    assert body["ok"] is True and body["duplicate"] is True


def test_a_closed_bill_takes_no_parents(biller, make_bill, make_parent):
    make_bill("B-1")
    first, second = make_parent(children=1), make_parent(children=1)
    load(biller, "B-1", first.qr)
    biller.post("/bills/B-1/close", headers=JSON)
    refused(load(biller, "B-1", second.qr), 409, "bill_closed")


def test_a_parent_on_another_bill_is_refused_naming_it(biller, make_bill, make_parent):
    make_bill("B-1")
    make_bill("B-2")
    parent = make_parent(children=1)
    load(biller, "B-1", parent.qr)
    message = refused(load(biller, "B-2", parent.qr), 409, "parent_on_other_bill")
    assert "B-1" in message


def test_an_empty_parent_is_parent_empty(biller, make_bill, make_parent):
    make_bill("B-1")
    refused(load(biller, "B-1", make_parent().qr), 409, "parent_empty")


def test_a_full_bill_is_bill_full(biller, make_bill, make_parent):
    make_bill("B-1", capacity=1)
    load(biller, "B-1", make_parent(children=1).qr)
    message = refused(load(biller, "B-1", make_parent(children=1).qr), 409, "bill_full")
    assert "1/1" in message


def test_refused_loads_are_in_the_scan_log(biller, make_bill, make_parent):
    bill = make_bill("B-1")
    load(biller, "B-1", make_parent().qr)
    reasons = db.session.scalars(select(Scan.reason).where(Scan.bill_id == bill.id, Scan.outcome == "rejected"))
    assert list(reasons) == ["parent_empty"]


# The order of the loading checks


def test_order_code_before_bill(biller):
    refused(load(biller, "NOPE", "ABC123"), 409, "wrong_kind")
    refused(load(biller, "NOPE", "???"), 400, "invalid_qr")


def test_order_bill_before_parent(biller):
    refused(load(biller, "NOPE", "SB99999"), 404, "bill_not_found")


def test_order_parent_not_found_before_bill_closed(biller, make_bill, make_parent):
    make_bill("B-1")
    load(biller, "B-1", make_parent(children=1).qr)
    biller.post("/bills/B-1/close", headers=JSON)
    refused(load(biller, "B-1", "SB99999"), 404, "parent_not_found")


def test_order_bill_closed_before_other_bill_and_empty(biller, make_bill, make_parent):
    make_bill("B-1")
    make_bill("B-2")
    elsewhere = make_parent(children=1)
    load(biller, "B-2", elsewhere.qr)
    load(biller, "B-1", make_parent(children=1).qr)
    biller.post("/bills/B-1/close", headers=JSON)
    refused(load(biller, "B-1", elsewhere.qr), 409, "bill_closed")
    refused(load(biller, "B-1", make_parent().qr), 409, "bill_closed")


def test_order_other_bill_before_empty_and_full(biller, make_bill, make_parent):
    make_bill("B-1", capacity=1)
    make_bill("B-2")
    elsewhere = make_parent(children=1)
    load(biller, "B-2", elsewhere.qr)
    load(biller, "B-1", make_parent(children=1).qr)
    refused(load(biller, "B-1", elsewhere.qr), 409, "parent_on_other_bill")


def test_order_empty_before_full(biller, make_bill, make_parent):
    make_bill("B-1", capacity=1)
    load(biller, "B-1", make_parent(children=1).qr)
    refused(load(biller, "B-1", make_parent().qr), 409, "parent_empty")


# Removing parents


def test_removing_a_parent_takes_it_off_the_bill(biller, make_bill, make_parent):
    make_bill("B-1", capacity=4)
    first, second = make_parent(children=5), make_parent(children=30)
    load(biller, "B-1", first.qr)
    body = load(biller, "B-1", second.qr).get_json()
    assert (body["bill"]["parent_count"], body["bill"]["child_count"], body["bill"]["weight_kg"]) == (2, 35, 35.0)
    assert body["bill"]["expected_weight_kg"] == 120.0

    response = biller.post(f"/bills/B-1/parents/{first.qr.lower()}/remove", headers=JSON)
    assert response.status_code == 200
    body = response.get_json()
    assert body["ok"] is True
    assert (body["bill"]["parent_count"], body["bill"]["child_count"], body["bill"]["weight_kg"]) == (1, 30, 30.0)
    assert body["parent"]["qr"] == first.qr and body["parent"]["bill_no"] is None
    row = db.session.scalar(select(Bill).where(Bill.bill_no == "B-1"))
    db.session.refresh(row)
    assert (row.parent_count, row.child_count) == (1, 30)
    assert db.session.scalar(select(Bag.bill_id).where(Bag.qr == first.qr)) is None


def test_removing_in_a_browser_redirects_with_a_flash(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=1)
    load(biller, "B-1", parent.qr)
    response = biller.post(f"/bills/B-1/parents/{parent.qr}/remove")
    assert response.status_code == 303
    page = biller.get("/bills/B-1").get_data(as_text=True)
    assert f"Removed parent bag {parent.qr} from bill B-1." in page
    assert "No parent bags loaded yet." in page


def test_removing_from_a_closed_bill_is_bill_closed(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=1)
    load(biller, "B-1", parent.qr)
    biller.post("/bills/B-1/close", headers=JSON)
    refused(biller.post(f"/bills/B-1/parents/{parent.qr}/remove", headers=JSON), 409, "bill_closed")


def test_removing_a_parent_not_on_the_bill_is_refused(biller, make_bill, make_parent):
    make_bill("B-1")
    make_bill("B-2")
    parent = make_parent(children=1)
    load(biller, "B-2", parent.qr)
    refused(biller.post(f"/bills/B-1/parents/{parent.qr}/remove", headers=JSON), 409, "parent_not_on_bill")
    loose = make_parent(children=1)
    refused(biller.post(f"/bills/B-1/parents/{loose.qr}/remove", headers=JSON), 409, "parent_not_on_bill")
    response = biller.post(f"/bills/B-1/parents/{loose.qr}/remove")
    assert response.status_code == 409
    assert f"Parent bag {loose.qr} is not on bill B-1." in response.get_data(as_text=True)


# Closing and reopening


def test_an_empty_bill_cannot_close(biller, make_bill):
    make_bill("B-1")
    message = refused(biller.post("/bills/B-1/close", headers=JSON), 409, "bill_empty")
    assert "B-1" in message
    response = biller.post("/bills/B-1/close")
    assert response.status_code == 409
    assert "has no parent bags" in response.get_data(as_text=True)


def test_close_and_reopen(biller, make_bill, make_parent):
    make_bill("B-1")
    load(biller, "B-1", make_parent(children=2).qr)
    body = biller.post("/bills/B-1/close", headers=JSON).get_json()
    assert body == {"ok": True, "duplicate": False, "bill": body["bill"]}
    assert body["bill"]["status"] == "closed" and body["bill"]["closed_at"]
    assert biller.post("/bills/B-1/close", headers=JSON).get_json()["duplicate"] is True

    body = biller.post("/bills/b-1/reopen", headers=JSON).get_json()
    assert body["duplicate"] is False and body["bill"]["status"] == "open"
    assert biller.post("/bills/B-1/reopen", headers=JSON).get_json()["duplicate"] is True
    actions = db.session.scalars(select(AuditEntry.action).where(AuditEntry.target == "B-1").order_by(AuditEntry.id))
    assert list(actions) == ["bill.create", "bill.close", "bill.reopen"]


def test_close_and_reopen_in_a_browser(biller, make_bill, make_parent):
    make_bill("B-1")
    load(biller, "B-1", make_parent(children=2).qr)
    response = biller.post("/bills/B-1/close")
    assert response.status_code == 303 and response.headers["Location"].endswith("/bills/B-1")
    assert "Bill B-1 closed." in biller.get("/bills/B-1").get_data(as_text=True)
    biller.post("/bills/B-1/reopen")
    assert "Bill B-1 reopened." in biller.get("/bills/B-1").get_data(as_text=True)


def test_close_and_reopen_an_unknown_bill_is_404(biller):
    refused(biller.post("/bills/NOPE/close", headers=JSON), 404, "bill_not_found")
    refused(biller.post("/bills/NOPE/reopen", headers=JSON), 404, "bill_not_found")


# A billed parent is frozen


def test_child_scans_into_a_billed_parent_are_refused(biller, make_bill, make_parent):
    make_bill("B-1")
    parent = make_parent(children=2)
    load(biller, "B-1", parent.qr)
    response = biller.post("/scan/child", data={"parent": parent.qr, "qr": "NEWCHILD1"}, headers=JSON)
    refused(response, 409, "parent_on_bill")
    assert db.session.scalar(select(Bag).where(Bag.qr == "NEWCHILD1")) is None


# Who may use bills


BILL_ROUTES = [
    ("GET", "/bills"),
    ("POST", "/bills"),
    ("GET", "/bills/B-1"),
    ("POST", "/bills/B-1/parents"),
    ("POST", "/bills/B-1/parents/SB10000/remove"),
    ("POST", "/bills/B-1/close"),
    ("POST", "/bills/B-1/reopen"),
]


@pytest.mark.parametrize(("method", "path"), BILL_ROUTES)
def test_dispatchers_get_403_on_every_bill_route(make_user, login_as, make_bill, make_parent, method, path):
    make_bill("B-1")
    make_parent(children=1)
    dispatcher = login_as(make_user("floor", role="dispatcher", area="NORTH"))
    form = {"bill_no": "B-9", "capacity": "5", "qr": "SB10000"}
    response = dispatcher.open(path, method=method, data=form if method == "POST" else None, headers=JSON)
    refused(response, 403, "forbidden")
    assert dispatcher.open(path, method=method, data=form if method == "POST" else None).status_code == 403
    assert db.session.scalar(select(Bill).where(Bill.bill_no == "B-9")) is None
    assert db.session.scalar(select(Bag.bill_id).where(Bag.qr == "SB10000")) is None


def test_logged_out_visitors_are_sent_to_log_in(client):
    response = client.get("/bills")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/bills", headers=JSON).status_code == 401


def test_admins_may_run_bills(make_user, login_as, make_parent):
    admin = login_as(make_user("boss", role="admin", area=None))
    assert new_bill(admin, bill_no="B-5").status_code == 201
    assert load(admin, "B-5", make_parent(children=1).qr).get_json()["bill"]["parent_count"] == 1
    assert admin.get("/bills").status_code == 200


def test_bill_posts_need_the_csrf_token(make_user, login_as):
    biller = login_as(make_user("office", role="biller", area=None))
    biller.csrf_token = None
    refused(new_bill(biller), 400, "csrf_failed")
