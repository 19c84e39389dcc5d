"""Who reaches what: every route of the app against every kind of visitor, then the ways
around it (another area's bags, open redirects at login, old session cookies, guessing).

The matrix is built from ``app.url_map``: a route added without a row here fails
``test_every_route_has_a_row``. Every write a row expects to be refused is also checked
to have changed nothing (``assert_changed_nothing``).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import helpers
import pytest
from helpers import JSON, PASSWORD, BagtrackClient, log_in
from sqlalchemy import select

from bagtrack import accounts, billing, scanning
from bagtrack.extensions import db, limiter
from bagtrack.models import TALLY_FIELDS, Bag, DispatchArea, Scan, User

# Not on the metrics allow-list: /metrics must refuse every session from here.
FLOOR_ADDRESS = "192.0.2.10"
ACTORS = ("anonymous", "dispatcher", "dispatcher_other_area", "biller", "admin", "disabled", "locked")
# The disabled and the locked user are, to the site, nobody at all.
NOBODY = ("anonymous", "disabled", "locked")


@dataclass(frozen=True)
class Row:
    """One route: how to call it, and the status each actor gets.

    ``path`` and ``form`` may name ``{parent}``, ``{child}`` (packed in
    ``{parent}``), ``{loose}`` (a child in no parent), ``{loaded}`` (a parent
    on ``{bill}``) and ``{bill}``: area A's for most actors, area B's for a
    dispatcher of A trying another area's objects.
    """

    method: str
    rule: str
    path: str
    nobody: int
    dispatcher: int
    biller: int
    admin: int
    other_area: int | None = None
    form: dict = field(default_factory=dict)

    def expected(self, actor: str) -> int:
        if actor in NOBODY:
            return self.nobody
        if actor == "dispatcher_other_area":
            return self.dispatcher if self.other_area is None else self.other_area
        return getattr(self, actor)


def page(rule, path=None, *, dispatcher=200, other_area=None, biller=200, admin=200):
    return Row("GET", rule, path or rule, 302, dispatcher, biller, admin, other_area)


def api(rule, path=None, *, other_area=None):
    return Row("GET", rule, path or rule, 401, 200, 200, 200, other_area)


def open_to_all(method, rule, path=None, status=200, form=None):
    return Row(method, rule, path or rule, status, status, status, status, form=form or {})


def post(rule, path=None, *, dispatcher=403, other_area=None, biller=403, admin=303, form=None):
    return Row("POST", rule, path or rule, 302, dispatcher, biller, admin, other_area, form or {})


NEW_USER = {"username": "newcomer", "role": "biller", "password": "long-enough-1"}
CHANGED_PASSWORD = {"current": PASSWORD, "new": "a-brand-new-secret", "repeated": "a-brand-new-secret"}
# Routes whose answer sends the user to the login form.
TO_LOGIN = ("/logout", "/account/logout-everywhere", "/login/code")
NEW_BILL = {"bill_no": "B-NEW", "capacity": "5", "destination": "Depot"}

MATRIX = [
    page("/"),
    page("/scan", "/scan?parent={parent}", other_area=404),
    post("/scan/parent", form={"qr": "{parent}"}, dispatcher=303, other_area=404, biller=303),
    post("/scan/child", form={"parent": "{parent}", "qr": "NEWCHILD01"}, dispatcher=303, other_area=404, biller=303),
    # Billers and admins scanned nothing into the parent themselves.
    post("/scan/undo", form={"parent": "{parent}"}, dispatcher=303, other_area=404, biller=409, admin=409),
    page("/bags", "/bags?area=NORTH&kind=parent"),
    page("/bags/<qr>", "/bags/{parent}", other_area=404),
    post("/bags/<qr>/close", "/bags/{parent}/close", biller=303),
    post(
        "/bags/<parent>/children/<child>/remove",
        "/bags/{parent}/children/{child}/remove",
        form={"reason": "scanned into the wrong bag"},
        biller=303,
    ),
    # The parent is open already: a harmless success.
    post("/bags/<qr>/reopen", "/bags/{parent}/reopen", form={"reason": "closed too early"}, biller=303),
    # Its children keep it in use, after the role check.
    post("/bags/<qr>/delete", "/bags/{parent}/delete", form={"reason": "label printed twice"}, admin=409),
    page("/labels", "/labels?start=SB00001&count=3", dispatcher=403),
    Row("GET", "/lookup", "/lookup?q={parent}", 302, 303, 303, 303),
    page("/bills", dispatcher=403),
    post("/bills", form=NEW_BILL, biller=303),
    page("/bills/<bill_no>", "/bills/{bill}", dispatcher=403),
    post("/bills/<bill_no>/parents", "/bills/{bill}/parents", form={"qr": "{parent}", "confirm": "1"}, biller=303),
    post("/bills/<bill_no>/parents/<qr>/remove", "/bills/{bill}/parents/{loaded}/remove", biller=303),
    post("/bills/<bill_no>/close", "/bills/{bill}/close", biller=303),
    post("/bills/<bill_no>/reopen", "/bills/{bill}/reopen", biller=303),
    post("/bills/<bill_no>/edit", "/bills/{bill}/edit", form={"destination": "Port gate 4"}, biller=303),
    post("/bills/<bill_no>/cancel", "/bills/{bill}/cancel", form={"reason": "truck did not come"}, biller=303),
    page("/bills/<bill_no>/print", "/bills/{bill}/print", dispatcher=403),
    page("/scans", "/scans"),
    page("/dashboard/live"),
    page("/reports/operators", "/reports/operators?format=csv"),
    page("/reports/daily", "/reports/daily?format=xlsx", dispatcher=403),
    api("/api/stats"),
    api("/api/reports/operators"),
    Row("GET", "/api/reports/daily", "/api/reports/daily", 401, 403, 200, 200),
    api("/api/scans", "/api/scans?limit=5"),
    api("/api/bags/<path:qr>", "/api/bags/{parent}", other_area=404),
    page("/admin/", dispatcher=403, biller=403),
    page("/admin/audit", dispatcher=403, biller=403),
    post("/admin/users", form=NEW_USER),
    post("/admin/users/<username>/role", "/admin/users/target/role", form={"role": "biller"}),
    post("/admin/users/<username>/area", "/admin/users/target/area", form={"area": "SOUTH"}),
    post("/admin/users/<username>/disable", "/admin/users/target/disable"),
    post("/admin/users/<username>/enable", "/admin/users/target/enable"),
    post("/admin/users/<username>/unlock", "/admin/users/target/unlock"),
    # The generated password is shown on the answer itself, not after a redirect.
    post("/admin/users/<username>/reset-password", "/admin/users/target/reset-password", admin=200),
    post("/admin/areas", form={"code": "EAST", "name": "East dock"}),
    page("/admin/import", dispatcher=403, biller=403),
    # Without a file the upload is refused as incomplete, after the role check.
    post("/admin/import", form={"kind": "bags"}, admin=400),
    page("/exports/"),
    page("/exports/<any(bags, scans, bills):what>.<any(csv, xlsx):fmt>", "/exports/bills.csv", dispatcher=403),
    open_to_all("GET", "/login"),
    open_to_all("POST", "/login", status=401, form={"username": "nobody", "password": "wrong-password"}),
    Row("POST", "/logout", "/logout", 302, 303, 303, 303),
    # Without a password given first, the code step sends everyone back to the login form.
    open_to_all("GET", "/login/code", status=303),
    open_to_all("POST", "/login/code", status=303, form={"code": "123456"}),
    page("/account/password"),
    post("/account/password", form=CHANGED_PASSWORD, dispatcher=303, biller=303),
    post("/account/logout-everywhere", dispatcher=303, biller=303),
    page("/account/2fa"),
    # A made-up code is refused (one in a million would be right: the app shows it).
    post("/account/2fa", form={"code": "000000"}, dispatcher=400, biller=400, admin=400),
    open_to_all("GET", "/health"),
    open_to_all("GET", "/ready"),
    open_to_all("GET", "/metrics", status=403),
    open_to_all("GET", "/static/<path:filename>", "/static/bagtrack.css"),
    open_to_all("GET", "/sw.js"),
]
ROWS = {(row.method, row.rule): row for row in MATRIX}


def routes_of(app) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    }


def test_every_route_has_a_row(app):
    assert len(MATRIX) == len(ROWS), "a route has two rows"
    assert routes_of(app) - set(ROWS) == set(), "routes without a row in the access matrix"
    assert set(ROWS) - routes_of(app) == set(), "rows for routes that no longer exist"


def new_client(app, address: str = FLOOR_ADDRESS) -> BagtrackClient:
    return helpers.new_client(app, address)


def logged_in(app, username: str, address: str = FLOOR_ADDRESS) -> BagtrackClient:
    return log_in(app, username, address)


@pytest.fixture
def floor(app, make_user, make_parent, make_bill):
    """Two dispatch areas with a dispatcher each, filled parents, a loose child, a bill in use, and the office.

    Returns the objects of area A and of area B by placeholder name.
    """
    dispatcher_a = make_user("floor-a", area="NORTH")
    dispatcher_b = make_user("floor-b", area="SOUTH")
    make_user("office", role="biller", area=None)
    make_user("boss", role="admin", area=None)
    make_user("target", area="NORTH")
    make_user("gone", area="NORTH")
    make_user("stuck", area="NORTH")
    objects = {}
    for name, user, numbers in (("a", dispatcher_a, (10001, 10002)), ("b", dispatcher_b, (20001, 20002, 20003))):
        parents = [make_parent(f"SB{number}", user=user, children=2 if name == "a" else 1) for number in numbers]
        # Scanned in, then undone: a loose child that stays in its area.
        loose = f"LOOSE{name.upper()}01"
        scanning.scan_child(db.session, user, parents[0].qr, loose)
        scanning.undo_last(db.session, user, parents[0].qr)
        bill = make_bill(f"B-{name.upper()}", capacity=5)
        billing.load_parent(db.session, user, bill.bill_no, parents[1].qr, confirmed=True)
        child = db.session.scalars(select(Bag.qr).where(Bag.parent_id == parents[0].id).order_by(Bag.qr)).first()
        objects[name] = {
            "parent": parents[0].qr,
            "child": child,
            "loose": loose,
            "loaded": parents[1].qr,
            "bill": bill.bill_no,
        }
    db.session.commit()
    return objects


def actor_client(app, actor: str) -> BagtrackClient:
    if actor == "anonymous":
        return new_client(app)
    if actor == "disabled":
        client = logged_in(app, "gone")
        accounts.disable_user(db.session, None, "gone")
        return client
    if actor == "locked":
        client = new_client(app)
        for _ in range(5):
            client.post("/login", data={"username": "stuck", "password": "wrong-password"})
        refused = client.post("/login", data={"username": "stuck", "password": PASSWORD})
        assert refused.status_code == 401
        assert "locked until" in refused.get_data(as_text=True)
        return client
    username = {"dispatcher": "floor-a", "dispatcher_other_area": "floor-a", "biller": "office", "admin": "boss"}
    return logged_in(app, username[actor])


def assert_answer(row: Row, actor: str, response) -> None:
    expected = row.expected(actor)
    assert response.status_code == expected, (actor, row.method, row.path, response.get_data(as_text=True)[:300])
    if expected == 302:
        assert urlsplit(response.headers["Location"]).path == "/login"
    if expected == 303:
        location = urlsplit(response.headers["Location"])
        assert location.netloc in ("", "localhost")
        assert (location.path == "/login") == (row.rule in TO_LOGIN), location
    if row.path.startswith("/api/") and expected != 200:
        body = response.get_json()
        assert body["ok"] is False and body["message"]
        assert body["error"] == {401: "login_required", 403: "forbidden", 404: "not_found"}[expected]
    if row.rule == "/metrics":
        assert response.get_json()["error"] == "forbidden"


def call(client, row: Row, objects: dict):
    path = row.path.format(**objects)
    form = {name: value.format(**objects) for name, value in row.form.items()}
    # The test shares the app's database session; on SQLite its open read transaction would block the server.
    db.session.commit()
    return client.open(path, method=row.method, data=form if row.method != "GET" else None)


def objects_for(floor: dict, actor: str) -> dict:
    return floor["b" if actor == "dispatcher_other_area" else "a"]


READS = [row for row in MATRIX if row.method == "GET"]
WRITES = [row for row in MATRIX if row.method != "GET"]


def refused(status: int) -> bool:
    """Sent to log in, or answered with an error: the request must have changed nothing."""
    return status == 302 or status >= 400


def stored_rows() -> dict[str, dict[tuple, dict]]:
    """Every row of every table, read fresh: ``{table: {primary key: row}}``."""
    db.session.commit()
    rows = {}
    for table in db.metadata.sorted_tables:
        key = [column.name for column in table.primary_key.columns]
        rows[table.name] = {
            tuple(row[name] for name in key): dict(row) for row in db.session.execute(table.select()).mappings()
        }
    return rows


def tally_by_area(rows: dict[tuple, dict]) -> dict[int, Counter]:
    """The dashboard tally summed over its shards and days, per area."""
    totals: dict[int, Counter] = {}
    for row in rows.values():
        totals.setdefault(row["area_id"], Counter()).update({name: row[name] for name in TALLY_FIELDS})
    return totals


def hours_by_who(rows: dict[tuple, dict]) -> Counter:
    """The per-hour tally's scans summed over its hours, per area, user and reason."""
    totals: Counter = Counter()
    for row in rows.values():
        totals[(row["area_id"], row["user_id"], row["reason"])] += row["scans"]
    return +totals


def assert_changed_nothing(before: dict, after: dict) -> None:
    """No row of any table changed, appeared or went, but for the scan log's record of a refusal.

    A refused scan is logged: at most one new scan-log row, ``rejected``, and the
    tally's ``scans_rejected`` one higher in that row's area (0 when it has none),
    and the per-hour tally's count of that user's refusals for that reason.
    Every other tally figure and every earlier scan-log row stay as they were.
    """
    scans_before, scans_after = before["scan"], after["scan"]
    assert {key: scans_after.get(key) for key in scans_before} == scans_before, "scan-log rows changed"
    added = [scans_after[key] for key in scans_after.keys() - scans_before.keys()]
    assert len(added) <= 1 and all(row["outcome"] == "rejected" for row in added), added
    expected_tally = tally_by_area(before["tally"])
    for row in added:
        expected_tally.setdefault(row["area_id"] or 0, Counter())["scans_rejected"] += 1
    assert tally_by_area(after["tally"]) == expected_tally
    expected_hours = hours_by_who(before["tally_hour"])
    for row in added:
        expected_hours[(row["area_id"] or 0, row["user_id"] or 0, row["reason"])] += 1
    assert hours_by_who(after["tally_hour"]) == expected_hours
    for table in before.keys() - {"scan", "tally", "tally_hour"}:
        assert after[table] == before[table], f"{table} changed"
    assert after.keys() == before.keys()


@pytest.mark.parametrize("actor", ACTORS)
def test_reads(app, floor, actor):
    """Every GET route for one actor (reads change nothing, so one client walks them all)."""
    client = actor_client(app, actor)
    for row in READS:
        assert_answer(row, actor, call(client, row, objects_for(floor, actor)))


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("row", WRITES, ids=[row.rule for row in WRITES])
def test_writes(app, floor, row, actor):
    """Every write route for one actor, each on a fresh floor (a write may change what the next one meets).

    A refused write leaves every table as it was.
    """
    client = actor_client(app, actor)
    before = stored_rows() if refused(row.expected(actor)) else None
    assert_answer(row, actor, call(client, row, objects_for(floor, actor)))
    if before is not None:
        assert_changed_nothing(before, stored_rows())


ANY_OBJECTS = {"parent": "SB10001", "child": "CHILD0001", "loose": "LOOSEA01", "loaded": "SB10002", "bill": "B-A"}


@pytest.mark.parametrize(
    "row", [row for row in MATRIX if row.nobody in (302, 401) and row.rule != "/login"], ids=lambda row: row.rule
)
def test_json_clients_are_told_to_log_in(app, row):
    response = new_client(app).open(row.path.format(**ANY_OBJECTS), method=row.method, headers=JSON)
    assert response.status_code == 401
    assert response.get_json() == {"ok": False, "error": "login_required", "message": "Please log in."}


def test_metrics_are_served_to_the_allow_listed_address(client):
    assert client.get("/metrics").status_code == 200


# A dispatcher of area A looking for area B's bags


def area_b_codes() -> set[str]:
    south = select(DispatchArea.id).where(DispatchArea.code == "SOUTH").scalar_subquery()
    return set(db.session.scalars(select(Bag.qr).where(Bag.area_id == south)))


def visible_codes(text: str, codes: set[str]) -> set[str]:
    return {code for code in codes if code in text}


@pytest.fixture
def floor_a(app, floor):
    return logged_in(app, "floor-a")


ERROR_LINE = re.compile(r'<p class="feedback feedback-error"[^>]*>([^<]*)</p>')


def answers_for(client, code: str, variant: str) -> tuple:
    """What the API and the bag page say about ``code`` written as ``variant``, the code blanked out."""
    path = variant.format(code=code, lower=code.lower())
    api_answer = client.get(f"/api/bags/{path}")
    page = client.get(f"/bags/{path}")
    return (
        api_answer.status_code,
        api_answer.get_data(as_text=True).replace(code, "CODE"),
        page.status_code,
        ERROR_LINE.findall(page.get_data(as_text=True).replace(code, "CODE")),
    )


VARIANTS = ["{code}", "{lower}", "{code}%0D%0A", "%E2%80%8B{code}", "%00{code}", "%20{code}%09", "x/../{code}"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_another_areas_bags_look_exactly_like_unknown_ones(floor_a, floor, variant):
    for code in sorted(area_b_codes()):
        unknown = "SB99999" if code.startswith("SB") else "CUNKNOWN99"
        hidden = answers_for(floor_a, code, variant)
        assert hidden[0] == hidden[2] == 404, (code, variant)
        assert hidden == answers_for(floor_a, unknown, variant), (code, variant)


def test_lists_and_searches_show_only_the_own_area(floor_a, floor):
    hidden = area_b_codes()
    for query in ("area=SOUTH", "q=SB2", "q=SB", "q=C", "bill=B-B", "kind=child", "status=packed", ""):
        response = floor_a.get(f"/bags?{query}")
        assert response.status_code == 200, query
        assert visible_codes(response.get_data(as_text=True), hidden) == set(), query
    assert "SB10001" in floor_a.get("/bags?q=SB").get_data(as_text=True)


def test_the_scan_log_shows_only_the_own_area(floor_a, floor):
    hidden = area_b_codes()
    rows, before = [], ""
    while True:
        answer = floor_a.get(f"/api/scans?limit=2{before}").get_json()
        rows += answer["scans"]
        if answer["next_before"] is None:
            break
        before = f"&before={answer['next_before']}"
    assert rows and {row["area"] for row in rows} == {"NORTH"}
    assert {row["qr"] for row in rows} & hidden == set()
    north = select(DispatchArea.id).where(DispatchArea.code == "NORTH").scalar_subquery()
    assert len(rows) == db.session.query(Scan).filter(Scan.area_id == north).count()
    for path in ("/scans", "/", "/dashboard/live"):
        assert visible_codes(floor_a.get(path).get_data(as_text=True), hidden) == set(), path


@pytest.mark.parametrize("what", ["bags", "scans"])
def test_exports_hold_only_the_own_area(floor_a, floor, what):
    hidden = area_b_codes()
    download = floor_a.get(f"/exports/{what}.csv")
    assert download.status_code == 200
    rows = download.get_data(as_text=True)
    assert "SB10001" in rows
    assert visible_codes(rows, hidden) == set()


def test_dashboard_figures_are_the_own_areas(app, floor_a, floor):
    office = logged_in(app, "office")
    mine = floor_a.get("/api/stats").get_json()
    everyone = office.get("/api/stats").get_json()
    assert mine["bags"] == {"parents": 2, "children": 5}
    assert everyone["bags"] == {"parents": 5, "children": 9}
    assert mine["parents"]["billed"] == 1 and everyone["parents"]["billed"] == 2
    assert mine["scans"]["total"] < everyone["scans"]["total"]


def test_scanning_into_another_areas_parent_changes_nothing(floor_a, floor):
    other = floor["b"]["parent"]
    children_before = db.session.scalar(select(Bag.child_count).where(Bag.qr == other))
    for path, form in (
        ("/scan/child", {"parent": other, "qr": "SNEAKY01"}),
        ("/scan/undo", {"parent": other}),
        ("/scan/parent", {"qr": other}),
    ):
        answer = floor_a.post(path, data=form, headers=JSON)
        assert answer.status_code == 404, path
        assert answer.get_json()["error"] == "parent_not_found"
    db.session.expire_all()
    assert db.session.scalar(select(Bag.child_count).where(Bag.qr == other)) == children_before
    assert db.session.scalar(select(Bag.id).where(Bag.qr == "SNEAKY01")) is None


# A dispatcher of area A taking area B's bags into area A's: refused without naming them, and harmless.
ACROSS_AREAS = [
    pytest.param("/scan/child", {"parent": "{a[parent]}", "qr": "{b[loose]}"}, id="B's loose child into A's parent"),
    pytest.param("/scan/child", {"parent": "{a[parent]}", "qr": "{b[child]}"}, id="B's packed child into A's parent"),
]


@pytest.mark.parametrize(("path", "form"), ACROSS_AREAS)
def test_another_areas_bags_cannot_be_taken_into_the_own_area(floor_a, floor, path, form):
    before = stored_rows()
    answer = floor_a.post(path, data={name: value.format(**floor) for name, value in form.items()}, headers=JSON)
    assert answer.status_code in (404, 409), answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["ok"] is False
    assert visible_codes(body["message"], area_b_codes() - {floor["b"][name] for name in ("loose", "child")}) == set()
    assert_changed_nothing(before, stored_rows())


def test_another_areas_loose_child_stays_there_and_the_invariants_hold(app, floor_a, floor):
    floor_b = logged_in(app, "floor-b")
    packed = floor_b.post("/scan/child", data={"parent": floor["b"]["parent"], "qr": "ROAMER01"}, headers=JSON)
    undone = floor_b.post("/scan/undo", data={"parent": floor["b"]["parent"]}, headers=JSON)
    assert (packed.status_code, undone.status_code) == (201, 200)

    taken = floor_a.post("/scan/child", data={"parent": floor["a"]["parent"], "qr": "ROAMER01"}, headers=JSON)

    assert taken.status_code == 404 and taken.get_json()["error"] == "not_found"
    assert floor["b"]["parent"] not in taken.get_json()["message"] and "SOUTH" not in taken.get_json()["message"]
    assert floor_b.get("/api/bags/ROAMER01").status_code == 200
    assert floor_a.get("/api/bags/ROAMER01").status_code == 404
    checked = app.test_cli_runner().invoke(args=["check", "--invariants"])
    assert checked.exit_code == 0 and "OK    invariants: all hold" in checked.output, checked.output


# Logging in: where it lands, and which cookies it honours


def hidden_next(page_html: str) -> str:
    marker = 'name="next" type="hidden" value="'
    start = page_html.index(marker) + len(marker)
    return page_html[start : page_html.index('"', start)]


def lands_on_this_site(location: str) -> bool:
    # Browsers drop tabs and newlines inside a URL and read backslashes as slashes.
    seen_by_browser = location.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    resolved = urlsplit(urljoin("http://localhost/login", seen_by_browser))
    return resolved.scheme == "http" and resolved.netloc == "localhost" and not seen_by_browser.startswith("//")


HOSTILE_NEXT = [
    "//evil.example",
    "https://evil.example",
    "/\\evil.example",
    "\\/evil",
    "javascript:alert(1)",
    "%2F%2Fevil",
    "/%09/evil",
    "/\t/evil.example",
    "\t//evil.example",
    " //evil.example",
    "///evil.example",
    "http:evil.example",
    "/ok\r\nLocation: https://evil.example",
    "\r\nSet-Cookie: session=stolen",
    "//evil.example%2F@localhost",
    "/\u3000/evil.example",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_login_never_redirects_off_site(app, make_user, target):
    make_user()
    via_page = new_client(app)
    form_page = via_page.get("/login", query_string={"next": target}).get_data(as_text=True)
    for client, offered in ((via_page, hidden_next(form_page)), (new_client(app), target)):
        response = client.post("/login", data={"username": "worker", "password": PASSWORD, "next": offered})
        assert response.status_code == 303
        location = response.headers["Location"]
        assert lands_on_this_site(location), (target, location)
        assert "\r" not in location and "\n" not in location
        assert "Set-Cookie: session=stolen" not in str(response.headers)


def test_login_returns_to_the_page_asked_for(app, make_user):
    make_user()
    client = new_client(app)
    sent_away = client.get("/bags?q=SB1")
    assert sent_away.status_code == 302
    form_page = client.get(sent_away.headers["Location"]).get_data(as_text=True)
    response = client.post("/login", data={"username": "worker", "password": PASSWORD, "next": hidden_next(form_page)})
    assert response.headers["Location"] == "/bags?q=SB1"


def session_cookie(client) -> str:
    return client.get_cookie("session").value


def replaying(app, cookie: str) -> BagtrackClient:
    stranger = new_client(app)
    stranger.set_cookie("session", cookie)
    return stranger


def test_a_session_cookie_from_before_login_stays_logged_out(app, make_user):
    make_user()
    client = new_client(app)
    before = session_cookie(client)
    assert client.post("/login", data={"username": "worker", "password": PASSWORD}).status_code == 303
    assert session_cookie(client) != before
    assert client.get("/api/stats").status_code == 200
    assert replaying(app, before).get("/api/stats").status_code == 401


def test_a_session_cookie_replayed_after_logout_is_logged_out(app, make_user):
    make_user()
    client = logged_in(app, "worker")
    stolen = session_cookie(client)
    assert replaying(app, stolen).get("/api/stats").status_code == 200
    response = client.post("/logout")
    assert response.status_code == 303 and response.headers["Location"] == "/login"
    replay = replaying(app, stolen)
    assert replay.get("/api/stats").status_code == 401
    assert replay.get("/").status_code == 302
    assert logged_in(app, "worker").get("/api/stats").status_code == 200


def test_logging_out_ends_this_devices_session_only(app, make_user):
    make_user()
    handheld, office_pc = logged_in(app, "worker"), logged_in(app, "worker")
    assert handheld.post("/logout").status_code == 303
    assert handheld.get("/api/stats").status_code == 401
    assert office_pc.get("/api/stats").status_code == 200


def test_logging_out_everywhere_ends_every_session(app, make_user):
    make_user()
    handheld, office_pc = logged_in(app, "worker"), logged_in(app, "worker")
    response = office_pc.post("/account/logout-everywhere")
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    assert handheld.get("/api/stats").status_code == 401
    assert office_pc.get("/api/stats").status_code == 401
    assert logged_in(app, "worker").get("/api/stats").status_code == 200


def test_a_disabled_users_open_session_ends_at_once(app, floor):
    client = logged_in(app, "gone")
    assert client.get("/bags").status_code == 200
    accounts.disable_user(db.session, None, "gone")
    assert client.get("/bags").status_code == 302
    assert client.post("/scan/parent", data={"qr": "SB10001"}, headers=JSON).status_code == 401
    refused = new_client(app).post("/login", data={"username": "gone", "password": PASSWORD})
    assert refused.status_code == 401
    assert "disabled" in refused.get_data(as_text=True)


# Guessing passwords


@pytest.fixture
def guarded_app(app, make_app, monkeypatch):
    # The limiter is one object per process, configured by the app made last (hence after ``app``); an
    # outage test elsewhere may have left it counting in memory.
    monkeypatch.setattr(limiter, "_storage_dead", False)
    return make_app(RATELIMIT_ENABLED=True, CACHE_KEY_PREFIX=f"bagtrack-test-{uuid.uuid4().hex[:8]}:")


def guess(client, username: str, password: str = "wrong-password"):
    return client.post("/login", data={"username": username, "password": password})


def locked_until(username: str):
    """Read on a connection of its own: the test's session must hold no transaction the server waits for."""
    db.session.commit()
    with db.engine.connect() as connection:
        return connection.scalar(select(User.locked_until).where(User.username == username))


def test_a_guesser_meets_the_lockout_long_before_the_rate_limit(guarded_app, make_user):
    make_user("target")
    guesser = new_client(guarded_app, "198.51.100.7")
    messages = [guess(guesser, "target").get_data(as_text=True) for _ in range(6)]
    # Locked after five, and still told nothing but "wrong": the lock shows only to the right password.
    assert all("Wrong username or password." in message for message in messages)
    assert locked_until("target") is not None
    assert "locked until" in guess(guesser, "target", PASSWORD).get_data(as_text=True)
    # The address keeps its allowance for at least 20 attempts a minute.
    assert {guess(guesser, f"someone{number}").status_code for number in range(20)} == {401}
    assert new_client(guarded_app, "198.51.100.8").get("/login").status_code == 200


def test_guessing_one_username_from_many_addresses_locks_before_it_limits(guarded_app, make_user):
    make_user("target")
    statuses, locked_at = [], None
    for number in range(12):
        answer = guess(new_client(guarded_app, f"203.0.113.{number + 1}"), "target")
        statuses.append(answer.status_code)
        if locked_at is None and locked_until("target"):
            locked_at = number + 1
    assert locked_at == 5
    assert 429 in statuses and statuses.index(429) + 1 > locked_at
