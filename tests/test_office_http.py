"""The office in the browser: corrections, the dispatch note, label sheets, the lookup box and list filters."""

from __future__ import annotations

import re
import threading

import pytest
from helpers import JSON, PASSWORD

from bagtrack import billing, queries
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import AuditEntry, Bag, Scan

FORM_CONTROLS = re.compile(r"<(form|input|button|select|textarea)\b")


@pytest.fixture
def office_floor(make_user, make_parent, make_bill):
    """A biller, an admin, a dispatcher per area, a loaded open bill and a parent of each area."""
    make_user("floor", area="NORTH")
    make_user("south", area="SOUTH")
    make_user("office", role="biller", area=None)
    office = make_user("boss", role="admin", area=None)
    make_parent("SB10001", children=3)
    make_parent("SB20001", area="SOUTH", children=2)
    bill = make_bill("B-7", capacity=4, vehicle_no="MH12", destination="Hamburg port")
    billing.load_parent(db.session, office, "B-7", "SB10001", confirmed=True)
    db.session.commit()
    return bill


def children(qr: str) -> list[str]:
    db.session.expire_all()
    return queries.children_of(db.session, db.session.query(Bag).filter_by(qr=qr).one())


def test_the_office_takes_a_child_out_of_a_billed_parent_from_the_bag_page(login_as, office_floor):
    office = login_as("office")
    page = office.get("/bags/SB10001").get_data(as_text=True)
    child = children("SB10001")[0]
    action = f"/bags/SB10001/children/{child}/remove"
    assert action in page and 'name="reason"' in page and "confirm.js" in page
    # The reason is the confirmation: without it nothing changes and the bag page says why.
    refused = office.post(action, data={})
    assert refused.status_code == 400 and "Give a reason" in refused.get_data(as_text=True)
    assert child in children("SB10001")
    done = office.post(action, data={"reason": "scanned twice"})
    assert done.status_code == 303 and done.headers["Location"].endswith("/bags/SB10001")
    assert "taken out of parent bag SB10001" in office.get("/bags/SB10001").get_data(as_text=True)
    assert child not in children("SB10001")
    duplicate = office.post("/bills/B-7/parents", data={"qr": "SB10001"}, headers=JSON).get_json()
    assert duplicate["duplicate"] is True and duplicate["bill"]["child_count"] == 2
    entry = db.session.query(AuditEntry).filter_by(action="parent.remove_child").one()
    assert entry.actor == "office" and "scanned twice" in entry.after
    assert find_violations(db.session) == []


def test_corrections_answer_json_clients_with_the_contract_shape(login_as, office_floor):
    office = login_as("office")
    child = children("SB20001")[0]
    removed = office.post(f"/bags/SB20001/children/{child}/remove", data={"reason": "r"}, headers=JSON)
    assert removed.status_code == 200
    body = removed.get_json()
    assert body["ok"] is True and body["child"] == child
    assert body["parent"] == {
        "qr": "SB20001",
        "status": "open",
        "child_count": 1,
        "capacity": 30,
        "area": "SOUTH",
        "bill_no": None,
    }
    again = office.post(f"/bags/SB20001/children/{child}/remove", data={"reason": "r"}, headers=JSON)
    assert again.status_code == 409 and again.get_json()["error"] == "child_not_in_parent"
    reopened = office.post("/bags/SB20001/reopen", data={"reason": "r"}, headers=JSON)
    assert reopened.get_json()["duplicate"] is True
    closed = office.post("/bills/B-7/close", headers=JSON)
    assert closed.status_code == 200
    frozen = office.post(f"/bags/SB10001/children/{children('SB10001')[0]}/remove", data={"reason": "r"}, headers=JSON)
    assert frozen.status_code == 409 and frozen.get_json()["error"] == "bill_closed"


def test_only_an_admin_deletes_and_only_what_is_unused(login_as, office_floor, make_parent):
    make_parent("SB10009")
    office, boss = login_as("office"), login_as("boss")
    assert office.post("/bags/SB10009/delete", data={"reason": "r"}).status_code == 403
    assert "/bags/SB10009/delete" not in office.get("/bags/SB10009").get_data(as_text=True)
    assert "/bags/SB10009/delete" in boss.get("/bags/SB10009").get_data(as_text=True)
    in_use = boss.post("/bags/SB10001/delete", data={"reason": "r"}, headers=JSON)
    assert in_use.status_code == 409 and in_use.get_json()["error"] == "bag_in_use"
    deleted = boss.post("/bags/sb10009/delete", data={"reason": "label printed twice"})
    assert deleted.status_code == 303 and deleted.headers["Location"].endswith("/bags")
    assert boss.get("/bags/SB10009").status_code == 404
    # Its scan history stays in the log, under its code.
    assert db.session.query(Scan).filter_by(qr="SB10009").count() >= 1
    assert find_violations(db.session) == []


def test_editing_and_cancelling_a_bill_from_its_page(login_as, office_floor):
    office = login_as("office")
    page = office.get("/bills/B-7").get_data(as_text=True)
    assert "/bills/B-7/edit" in page and "/bills/B-7/cancel" in page and "/bills/B-7/print" in page
    edited = office.post(
        "/bills/B-7/edit",
        data={
            "destination": "Hamburg gate 2",
            "vehicle_no": "mh12 x",
            "capacity": "3",
            "description": "",
            "reason": "typo",
        },
    )
    assert edited.status_code == 303
    shown = office.get("/bills/B-7").get_data(as_text=True)
    assert "Hamburg gate 2" in shown and "MH12 X" in shown
    too_small = office.post("/bills/B-7/edit", data={"capacity": "0", "reason": "x"}, headers=JSON)
    assert too_small.status_code == 400 and too_small.get_json()["error"] == "invalid_input"
    assert office.post("/bills/B-7/cancel", data={"reason": ""}).status_code == 400
    cancelled = office.post("/bills/B-7/cancel", data={"reason": "truck never came"}, headers=JSON)
    assert cancelled.get_json()["bill"]["status"] == "cancelled"
    assert cancelled.get_json()["bill"]["parent_count"] == 0
    page = office.get("/bills/B-7").get_data(as_text=True)
    assert "was cancelled" in page and "/bills/B-7/cancel" not in page
    load = office.post("/bills/B-7/parents", data={"qr": "SB10001"}, headers=JSON)
    assert load.status_code == 409 and load.get_json()["error"] == "bill_cancelled"
    assert "B-7" in office.get("/bills?status=cancelled").get_data(as_text=True)
    assert find_violations(db.session) == []


def test_the_dispatch_note_is_paper_only(login_as, office_floor):
    office = login_as("office")
    office.post("/bills/B-7/close")
    response = office.get("/bills/B-7/print")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for text in ("Dispatch note", "B-7", "Hamburg port", "MH12", "SB10001", "by office", "3.0"):
        assert text in page, text
    for role in ("Loader", "Driver", "Biller"):
        assert f"{role}: name, signature, date" in page
    assert page.count("<svg") == 1 and "<title>B-7</title>" in page
    # The only control is the screen-only Print button, and no inline style or script (CSP).
    assert FORM_CONTROLS.findall(page) == ["button"]
    assert 'class="screen-only"' in page and " style=" not in page and "<script>" not in page
    assert "topbar" not in page
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp


def test_a_dispatcher_gets_no_paper(login_as, office_floor):
    floor = login_as("floor")
    assert floor.get("/bills/B-7/print").status_code == 403
    assert floor.get("/labels?start=SB00001&count=2").status_code == 403


def test_label_sheets(login_as, office_floor):
    office = login_as("office")
    sheet = office.get("/labels?start=sb00998&count=3").get_data(as_text=True)
    assert re.findall(r'<span class="label-code">(\w+)</span>', sheet) == ["SB00998", "SB00999", "SB01000"]
    assert sheet.count("<svg") == 3
    assert (
        len(re.findall(r'class="label"', office.get("/labels?start=SB00001&count=500").get_data(as_text=True))) == 500
    )
    for query in (
        "start=SB00001&count=501",
        "start=SB00001&count=0",
        "start=SB00001&count=-1",
        "start=SB00001&count=ten",
        "start=SB00001",
        "start=C1234&count=2",
        "start=&count=2",
        "start=SB99999&count=2",
        "start=%00SB1&count=2",
    ):
        refused = office.get(f"/labels?{query}")
        assert refused.status_code == 400, query
        assert "feedback-error" in refused.get_data(as_text=True)


@pytest.mark.parametrize(
    ("username", "query", "goes_to"),
    [
        ("floor", "sb10001", "/bags/SB10001"),
        ("floor", "SB10001%0D", "/bags/SB10001"),
        ("office", "SB20001", "/bags/SB20001"),
        ("office", "b-7", "/bills/B-7"),
        # A bill a dispatcher may not see, another area's bag, or nothing: the bag list searching for it.
        ("floor", "B-7", "/bags?q=B-7"),
        ("floor", "SB20001", "/bags?q=SB20001"),
        ("office", "NOTHING", "/bags?q=NOTHING"),
        ("office", "", "/bags"),
    ],
)
def test_the_lookup_box_finds_bags_and_bills(login_as, office_floor, username, query, goes_to):
    client = login_as(username)
    answer = client.get(f"/lookup?q={query}")
    assert answer.status_code == 303
    assert answer.headers["Location"] == goes_to
    if goes_to.startswith("/bags?") or goes_to == "/bags":
        page = client.get(goes_to).get_data(as_text=True)
        assert "was found" in page or "Type or scan" in page
        assert username == "office" or 'href="/bags/SB20001"' not in page


def test_every_page_has_the_lookup_box(login_as, office_floor):
    floor = login_as("floor")
    for path in ("/", "/scans", "/bags", "/bags/SB10001", "/scan"):
        assert 'action="/lookup"' in floor.get(path).get_data(as_text=True), path


def test_a_child_shows_the_bill_of_its_parent(login_as, office_floor):
    child = children("SB10001")[0]
    floor, office = login_as("floor"), login_as("office")
    assert floor.get(f"/api/bags/{child}").get_json()["bill_no"] == "B-7"
    assert "B-7" in floor.get(f"/bags/{child}").get_data(as_text=True)
    assert 'href="/bills/B-7"' in office.get(f"/bags/{child}").get_data(as_text=True)
    assert login_as("floor").get(f"/api/bags/{children('SB20001')[0]}").status_code == 404


def test_the_last_page_of_the_scan_log_has_no_cursor(login_as, office_floor):
    office = login_as("office")
    scans = db.session.query(Scan).count()
    whole = office.get(f"/api/scans?limit={scans}").get_json()
    one_short = office.get(f"/api/scans?limit={scans - 1}").get_json()
    assert (len(whole["scans"]), whole["next_before"]) == (scans, None)
    assert one_short["next_before"] == one_short["scans"][-1]["id"]
    rest = office.get(f"/api/scans?limit={scans}&before={one_short['next_before']}").get_json()
    assert (len(rest["scans"]), rest["next_before"]) == (1, None)


def test_scan_log_filters(login_as, office_floor):
    floor, office = login_as("floor"), login_as("office")
    floor.post("/scan/child", data={"parent": "SB10001", "qr": "NEWKID1"}, headers=JSON)  # on a bill: refused
    rejected = floor.get("/api/scans?outcome=rejected").get_json()["scans"]
    assert [row["reason"] for row in rejected] == ["parent_on_bill"]
    assert all(row["user"] == "office" for row in office.get("/api/scans?user=office").get_json()["scans"])
    assert office.get("/api/scans?user=nobody").get_json()["scans"] == []
    south = office.get("/api/scans?area=south&kind=child").get_json()["scans"]
    assert south and {(row["area"], row["kind"]) for row in south} == {("SOUTH", "child")}
    # A dispatcher's area filter never reaches past their own area.
    assert floor.get("/api/scans?area=SOUTH").get_json()["scans"] == []
    today = db.session.query(Scan).order_by(Scan.id.desc()).first().at.date().isoformat()
    assert len(office.get(f"/api/scans?from={today}&to={today}").get_json()["scans"]) == db.session.query(Scan).count()
    assert office.get("/api/scans?to=2001-01-01").get_json()["scans"] == []
    page = office.get("/scans?reason=parent_on_bill&outcome=rejected").get_data(as_text=True)
    assert page.count("data-scan-id=") == 1
    for query in (
        "outcome=maybe",
        "kind=dance",
        "reason=DROP%20TABLE",
        "from=2026-13-01",
        "from=2026-02-02&to=2026-02-01",
    ):
        assert office.get(f"/api/scans?{query}").status_code == 400, query
        assert office.get(f"/scans?{query}").status_code == 400, query


def test_the_scan_log_pages_keep_their_filters(app, login_as, office_floor, make_parent):
    office = login_as("office")
    for number in range(app.config["BAGTRACK_PAGE_SIZE"] // 30 + 1):
        make_parent(f"SB1100{number}", children=30)
    page = office.get("/scans?kind=child&area=NORTH").get_data(as_text=True)
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert "kind=child" in older and "area=NORTH" in older
    assert office.get(older).status_code == 200


def test_bill_list_filters(login_as, office_floor, make_bill):
    make_bill("C-100", destination="Vienna west")
    make_bill("C-200", destination="Lyon")
    office = login_as("office")

    def listed(query: str) -> list[str]:
        page = office.get(f"/bills?{query}").get_data(as_text=True)
        return re.findall(r'<td><a href="/bills/([^"]+)">', page)

    assert listed("q=c-") == ["C-200", "C-100"]
    assert listed("q=vienna") == ["C-100"]
    assert listed("q=hamburg+PORT") == ["B-7"]
    assert listed("q=nowhere") == []
    assert listed("status=open&q=C-2") == ["C-200"]
    assert listed("to=2001-01-01") == []
    assert office.get("/bills?status=lost").status_code == 400


@pytest.mark.postgres
@pytest.mark.slow
def test_corrections_through_gunicorn_while_scanners_work(make_app, database_url, tmp_path):
    """The office removes children and cancels a bill on a real server while two scanners fill the same parent."""
    from servers import Gunicorn, http_login, scratch_database
    from test_faults import database_name

    with scratch_database(database_url, f"{database_name(database_url)}_office") as scratch_url:
        scratch_app = make_app(SQLALCHEMY_DATABASE_URI=scratch_url)
        cli = scratch_app.test_cli_runner()
        for command in (
            ["areas", "add", "NORTH"],
            ["users", "create", "floor", "--role", "dispatcher", "--area", "NORTH", "--password", PASSWORD],
            ["users", "create", "office", "--role", "biller", "--password", PASSWORD],
        ):
            assert cli.invoke(args=command).exit_code == 0
        environment = {"DATABASE_URL": scratch_url, "SECRET_KEY": "office-test-secret-office-test-secret"}
        server = Gunicorn(
            tmp_path / "gunicorn.log",
            {**environment, "REDIS_URL": "", "BAGTRACK_LIMIT_SCAN": "100000/minute"},
            "-w",
            "2",
        )
        try:
            base = server.base
            scanners = [http_login(base, "floor", PASSWORD) for _ in range(2)]
            office = http_login(base, "office", PASSWORD)
            assert scanners[0].post(f"{base}/scan/parent", data={"qr": "SB00001"}).status_code == 201
            for number in range(10):
                assert scanners[0].post(f"{base}/scan/child", data={"parent": "SB00001", "qr": f"FIRST{number:03d}"}).ok
            assert office.post(f"{base}/bills", data={"bill_no": "T-1", "capacity": "2"}).status_code == 201
            statuses: list[int] = []

            def scan(client, tag: str) -> None:
                for number in range(15):
                    answer = client.post(f"{base}/scan/child", data={"parent": "SB00001", "qr": f"{tag}{number:03d}"})
                    statuses.append(answer.status_code)

            threads = [threading.Thread(target=scan, args=(client, f"S{n}X")) for n, client in enumerate(scanners)]
            for thread in threads:
                thread.start()
            for number in range(0, 10, 2):
                answer = office.post(f"{base}/bags/SB00001/children/FIRST{number:03d}/remove", data={"reason": "check"})
                assert answer.status_code == 200, answer.text
            for thread in threads:
                thread.join(30)
            assert set(statuses) <= {200, 201, 409}
            assert office.post(f"{base}/bills/T-1/parents", data={"qr": "SB00001"}).status_code == 200
            cancelled = office.post(f"{base}/bills/T-1/cancel", data={"reason": "truck broke down"}).json()
            assert cancelled["bill"]["status"] == "cancelled"
            parent = office.get(f"{base}/api/bags/SB00001").json()
            assert parent["bill_no"] is None and parent["child_count"] == min(30, 5 + statuses.count(201))
        finally:
            server.kill()
        with scratch_app.app_context():
            assert find_violations(db.session) == []
            db.session.remove()
            db.engine.dispose()
