"""The supervisors' pages through HTTP: the dashboard figures and the scan log."""

from __future__ import annotations

import re

import pytest
from helpers import JSON
from sqlalchemy import select

from bagtrack import billing
from bagtrack.extensions import db
from bagtrack.models import Scan, User

FIGURE = re.compile(r'<span class="figure-value" id="fig-([a-z-]+)">(\d+)</span>')
SCAN_ROW = re.compile(r'<tr class="(accepted|rejected)" data-scan-id="(\d+)">')


def figures(client) -> dict[str, int]:
    response = client.get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    return {name: int(value) for name, value in FIGURE.findall(response.get_data(as_text=True))}


def scan_ids(response) -> list[int]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [int(scan_id) for _, scan_id in SCAN_ROW.findall(response.get_data(as_text=True))]


@pytest.fixture
def dispatcher(make_user, login_as):
    return login_as(make_user("nora", "dispatcher", "NORTH"))


@pytest.fixture
def biller(make_user, login_as):
    return login_as(make_user("bill", "biller", None))


def test_anonymous_is_sent_to_login(client):
    for path in ("/", "/scans"):
        response = client.get(path)
        assert response.status_code == 302 and response.location.startswith("/login")


def test_figures_follow_the_scans(dispatcher, biller, make_bill):
    dispatcher.post("/scan/parent", data={"qr": "SB00001"}, headers=JSON)
    for number in range(1, 4):
        dispatcher.post("/scan/child", data={"parent": "SB00001", "qr": f"C000{number}"}, headers=JSON)
    dispatcher.post("/scan/child", data={"parent": "SB00001", "qr": "C0001"}, headers=JSON)  # duplicate
    dispatcher.post("/scan/child", data={"parent": "SB00001", "qr": "bad code"}, headers=JSON)  # refused
    dispatcher.post("/scan/parent", data={"qr": "SB00002"}, headers=JSON)
    dispatcher.post("/scan/child", data={"parent": "SB00002", "qr": "C0009"}, headers=JSON)
    biller.post("/bags/SB00002/close", headers=JSON)
    make_bill("B-1")
    make_bill("B-2")
    factory = db.session.scalars(select(User).where(User.username == "factory")).one()
    billing.load_parent(db.session, factory, "B-2", "SB00002", confirmed=True)
    billing.close_bill(db.session, factory, "B-2")

    accepted = db.session.scalar(select(db.func.count()).select_from(Scan).where(Scan.outcome == "ok"))
    assert figures(biller) == {
        "parents": 2,
        "children": 4,
        "parents-open": 1,
        "parents-complete": 1,
        "parents-billed": 1,
        "bills-open": 1,
        "bills-closed": 1,
        "scans-today": accepted,
        "scans-total": accepted,
    }
    # Two parent scans, four new children, one duplicate, one close, one load.
    assert accepted == 9
    stats = biller.get("/api/stats").get_json()
    assert stats["bags"] == {"parents": 2, "children": 4}
    assert stats["parents"] == {"open": 1, "complete": 1, "billed": 1}
    assert stats["scans"] == {"total": accepted, "today": accepted}


def test_dispatcher_sees_the_figures_of_their_area(dispatcher, biller, make_parent):
    make_parent("SB00001", area="NORTH", children=2)
    make_parent("SB00002", area="SOUTH", children=5)
    page = dispatcher.get("/").get_data(as_text=True)
    assert "Figures and scans of area <strong>NORTH</strong> only" in page
    north = figures(dispatcher)
    assert (north["parents"], north["children"]) == (1, 2)
    everywhere = figures(biller)
    assert (everywhere["parents"], everywhere["children"]) == (2, 7)
    assert "Figures and scans of area" not in biller.get("/").get_data(as_text=True)


def test_dashboard_lists_the_twenty_latest_scans_with_refusals_marked(dispatcher, make_parent):
    make_parent("SB00001", children=30)
    dispatcher.post("/scan/child", data={"parent": "SB00001", "qr": "C9999"}, headers=JSON)
    page = dispatcher.get("/")
    ids = scan_ids(page)
    newest = list(db.session.scalars(select(Scan.id).order_by(Scan.id.desc()).limit(20)))
    assert ids == newest
    html = page.get_data(as_text=True)
    assert f'<tr class="rejected" data-scan-id="{newest[0]}">' in html
    assert "rejected: parent_full" in html


def test_scan_log_pages_newest_first(biller, make_parent, app, monkeypatch):
    monkeypatch.setitem(app.config, "BAGTRACK_PAGE_SIZE", 3)
    make_parent("SB00001", children=6)  # seven scans
    every_id = list(db.session.scalars(select(Scan.id).order_by(Scan.id.desc())))
    assert len(every_id) == 7
    seen = []
    path = "/scans"
    while path:
        response = biller.get(path)
        seen.extend(scan_ids(response))
        older = re.search(r'<a rel="next" href="([^"]+)">Older</a>', response.get_data(as_text=True))
        path = older.group(1) if older else None
    assert seen == every_id
    assert scan_ids(biller.get(f"/scans?before={every_id[2]}")) == every_id[3:6]


@pytest.mark.parametrize("before", ["x", "0", "-3", "1e3", "9" * 30])
def test_scan_log_refuses_a_bad_before(biller, before):
    response = biller.get(f"/scans?before={before}")
    assert response.status_code == 400
    assert "before" in response.get_data(as_text=True)


def test_scan_log_is_scoped_to_the_dispatchers_area(dispatcher, biller, make_parent):
    north = make_parent("SB00001", area="NORTH", children=1)
    make_parent("SB00002", area="SOUTH", children=1)
    north_ids = set(db.session.scalars(select(Scan.id).where(Scan.area_id == north.area_id)))
    assert len(north_ids) == 2
    page = dispatcher.get("/scans")
    assert set(scan_ids(page)) == north_ids
    assert "SB00002" not in page.get_data(as_text=True)
    assert len(scan_ids(biller.get("/scans"))) == 4


def test_bill_figures_are_left_out_for_a_dispatcher(dispatcher, biller, make_bill):
    make_bill("B-1")

    mine = dispatcher.get("/api/stats").get_json()
    office = biller.get("/api/stats").get_json()

    assert "bills" not in mine and set(mine) == {"bags", "parents", "scans", "generated_at"}
    assert office["bills"] == {"open": 1, "closed": 0}
    assert "bills-open" not in figures(dispatcher) and "bills closed" not in dispatcher.get("/").get_data(as_text=True)
    assert figures(biller)["bills-open"] == 1
