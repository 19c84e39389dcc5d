"""The bag list and bag pages through HTTP: filters, pagination, area scoping, closing short."""

from __future__ import annotations

import re

import pytest
from flask import url_for
from helpers import JSON
from sqlalchemy import select

from bagtrack import billing
from bagtrack.extensions import db
from bagtrack.models import AuditEntry, Bag, User

ROW_QR = re.compile(r'<td class="code"><a href="/bags/([A-Z0-9]+)">')


def listed(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return ROW_QR.findall(response.get_data(as_text=True))


def status_of(qr: str) -> str:
    return db.session.scalar(select(Bag.status).where(Bag.qr == qr).execution_options(populate_existing=True))


@pytest.fixture
def dispatcher(make_user, login_as):
    return login_as(make_user("nora", "dispatcher", "NORTH"))


@pytest.fixture
def biller(make_user, login_as):
    return login_as(make_user("bill", "biller", None))


def child_qrs(parent: Bag) -> list[str]:
    return list(db.session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id).order_by(Bag.qr)))


def test_anonymous_is_sent_to_login(client):
    for path in ("/bags", "/bags/SB00001"):
        response = client.get(path)
        assert response.status_code == 302 and response.location.startswith("/login")


# The list ---------------------------------------------------------------------


def test_list_is_newest_first_and_filters_by_kind_and_status(biller, make_parent):
    first = make_parent("SB00001", children=1)
    make_parent("SB00002", children=30)
    only_child = child_qrs(first)[0]
    everything = listed(biller.get("/bags"))
    assert len(everything) == 33
    assert everything[-3:] == ["SB00002", only_child, "SB00001"]
    assert listed(biller.get("/bags?kind=parent")) == ["SB00002", "SB00001"]
    assert listed(biller.get("/bags?kind=parent&status=complete")) == ["SB00002"]
    assert listed(biller.get("/bags?kind=parent&status=open")) == ["SB00001"]
    assert only_child in listed(biller.get("/bags?kind=child&status=packed"))
    # An unknown kind or status filters nothing out.
    assert len(listed(biller.get("/bags?kind=crate&status=lost"))) == 33


def test_list_filters_by_code_prefix_normalised(biller, make_parent):
    make_parent("SB00001")
    make_parent("SB00002")
    make_parent("SB00010")
    assert listed(biller.get("/bags?q=sb0000%E2%80%8B")) == ["SB00002", "SB00001"]
    assert listed(biller.get("/bags?q=SB0001")) == ["SB00010"]
    assert listed(biller.get("/bags?q=%25")) == []


def test_list_filters_by_area_and_bill(biller, make_parent, make_bill):
    make_parent("SB00001", area="NORTH", children=1)
    south = make_parent("SB00002", area="SOUTH", children=1)
    make_bill("B-7")
    factory = db.session.scalars(select(User).where(User.username == "factory")).one()
    billing.load_parent(db.session, factory, "B-7", south.qr, confirmed=True)
    assert listed(biller.get("/bags?kind=parent&area=south")) == ["SB00002"]
    assert listed(biller.get("/bags?kind=parent&area=WEST")) == []
    assert listed(biller.get("/bags?bill=b-7")) == ["SB00002"]
    assert listed(biller.get("/bags?bill=B-404")) == []


def test_list_pages_with_before_and_keeps_the_filters(biller, make_parent, app, monkeypatch):
    monkeypatch.setitem(app.config, "BAGTRACK_PAGE_SIZE", 2)
    for number in range(1, 6):
        make_parent(f"SB0000{number}", children=1)
    first = biller.get("/bags?kind=parent")
    assert listed(first) == ["SB00005", "SB00004"]
    older = re.search(r'<a rel="next" href="([^"]+)">Older</a>', first.get_data(as_text=True)).group(1)
    assert "kind=parent" in older and "before=" in older
    second = biller.get(older.replace("&amp;", "&"))
    assert listed(second) == ["SB00003", "SB00002"]
    third_link = re.search(r'<a rel="next" href="([^"]+)">Older</a>', second.get_data(as_text=True)).group(1)
    third = biller.get(third_link.replace("&amp;", "&"))
    assert listed(third) == ["SB00001"]
    assert "Older</a>" not in third.get_data(as_text=True)


@pytest.mark.parametrize("before", ["abc", "-1", "0", "1.5", "9" * 40, "١٢"])
def test_list_refuses_a_bad_before(biller, before):
    response = biller.get(f"/bags?before={before}")
    assert response.status_code == 400
    assert "before" in response.get_data(as_text=True)


def test_dispatcher_lists_only_their_area(dispatcher, make_parent):
    make_parent("SB00001", area="NORTH")
    make_parent("SB00002", area="SOUTH")
    assert listed(dispatcher.get("/bags")) == ["SB00001"]
    assert listed(dispatcher.get("/bags?area=SOUTH")) == []
    assert '<select name="area">' not in dispatcher.get("/bags").get_data(as_text=True)


# One bag ----------------------------------------------------------------------


def test_parent_page_shows_contents_progress_and_history(dispatcher, make_parent):
    parent = make_parent("SB00001", children=3)
    page = dispatcher.get("/bags/sb00001")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "parent bag" in html and "NORTH" in html
    assert "3/30" in html
    for qr in child_qrs(parent):
        assert f'href="/bags/{qr}"' in html
    assert html.count('data-scan-id="') == 4  # the parent scan and three child scans
    assert "not on a bill" in html


def test_child_page_links_its_parent(dispatcher, make_parent):
    parent = make_parent("SB00001", children=1)
    qr = child_qrs(parent)[0]
    html = dispatcher.get(f"/bags/{qr.lower()}").get_data(as_text=True)
    assert "child bag" in html
    assert '<a class="code" href="/bags/SB00001">SB00001</a>' in html
    assert "packed" in html


def test_unknown_and_other_area_bags_are_the_same_404(dispatcher, make_parent):
    make_parent("SB00002", area="SOUTH")
    unknown = dispatcher.get("/bags/SB00404")
    other = dispatcher.get("/bags/SB00002")
    assert unknown.status_code == other.status_code == 404
    assert "Bag SB00404 was not found." in unknown.get_data(as_text=True)
    assert "Bag SB00002 was not found." in other.get_data(as_text=True)
    assert "SOUTH" not in other.get_data(as_text=True)


def test_bill_number_is_a_link_only_for_the_office(dispatcher, biller, make_parent, make_bill):
    parent = make_parent("SB00001", children=1)
    make_bill("B-7")
    factory = db.session.scalars(select(User).where(User.username == "factory")).one()
    billing.load_parent(db.session, factory, "B-7", parent.qr, confirmed=True)
    office = biller.get("/bags/SB00001").get_data(as_text=True)
    assert '<a href="/bills/B-7">B-7</a>' in office
    floor = dispatcher.get("/bags/SB00001").get_data(as_text=True)
    assert "B-7" in floor and 'href="/bills/B-7"' not in floor


# Closing short --------------------------------------------------------------------


def test_biller_closes_a_parent_short(biller, make_parent):
    make_parent("SB00001", children=4)
    assert "Close short at 4/30" in biller.get("/bags/SB00001").get_data(as_text=True)
    response = biller.post("/bags/sb00001/close", headers=JSON)
    assert response.status_code == 200
    body = response.get_json()
    assert body == {
        "ok": True,
        "duplicate": False,
        "parent": {
            "qr": "SB00001",
            "status": "complete",
            "child_count": 4,
            "capacity": 30,
            "area": "NORTH",
            "bill_no": None,
        },
    }
    assert status_of("SB00001") == "complete"
    assert db.session.scalar(select(AuditEntry.action).where(AuditEntry.target == "SB00001")) == "parent.close_short"
    again = biller.post("/bags/SB00001/close", headers=JSON)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert "Close short" not in biller.get("/bags/SB00001").get_data(as_text=True)


def test_close_short_without_javascript_redirects_with_a_message(biller, make_parent):
    make_parent("SB00001", children=4)
    response = biller.post("/bags/SB00001/close")
    assert response.status_code == 303 and response.location == "/bags/SB00001"
    assert "Parent bag SB00001 closed short at 4/30." in biller.get("/bags/SB00001").get_data(as_text=True)


def test_a_closed_short_parent_takes_no_more_children(biller, make_parent):
    make_parent("SB00001", children=4)
    biller.post("/bags/SB00001/close", headers=JSON)
    response = biller.post("/scan/child", data={"parent": "SB00001", "qr": "C0001"}, headers=JSON)
    assert response.status_code == 409 and response.get_json()["error"] == "parent_full"


def test_dispatcher_may_not_close_short(dispatcher, make_parent):
    make_parent("SB00001", children=4)
    assert "Close short" not in dispatcher.get("/bags/SB00001").get_data(as_text=True)
    response = dispatcher.post("/bags/SB00001/close", headers=JSON)
    assert response.status_code == 403 and response.get_json()["error"] == "forbidden"
    assert dispatcher.post("/bags/SB00001/close").status_code == 403
    assert status_of("SB00001") == "open"


def test_close_short_refusals(biller, make_parent):
    make_parent("SB00001")
    child_parent = make_parent("SB00002", children=1)
    empty = biller.post("/bags/SB00001/close", headers=JSON)
    assert empty.status_code == 409 and empty.get_json()["error"] == "parent_empty"
    page = biller.post("/bags/SB00001/close")
    assert page.status_code == 409
    assert 'data-error="parent_empty"' in page.get_data(as_text=True)
    assert '<h1 class="code">SB00001</h1>' in page.get_data(as_text=True)
    child = child_qrs(child_parent)[0]
    wrong = biller.post(f"/bags/{child}/close", headers=JSON)
    assert wrong.status_code == 409 and wrong.get_json()["error"] == "wrong_kind"
    missing = biller.post("/bags/SB00404/close")
    assert missing.status_code == 404
    assert 'data-error="parent_not_found"' in missing.get_data(as_text=True)
    assert status_of("SB00001") == "open"


def test_close_short_needs_a_csrf_token(biller, make_parent):
    make_parent("SB00001", children=1)
    biller.csrf_token = None
    response = biller.post("/bags/SB00001/close", headers=JSON)
    assert response.status_code == 400 and response.get_json()["error"] == "csrf_failed"
    assert status_of("SB00001") == "open"


@pytest.mark.parametrize("script_root", ["", "/warehouse"])
def test_bag_links_are_the_ones_url_for_makes(app, script_root):
    bag_url = app.jinja_env.globals["bag_url"]
    with app.test_request_context("/", base_url=f"http://handheld.example{script_root}"):
        for qr in ("SB00001", "C000000001", "A-B 7/ü?#%"):
            assert bag_url(qr) == url_for("bags.detail", qr=qr)
        assert bag_url("SB00001") == f"{script_root}/bags/SB00001"
