"""Every statement a hot request issues is served by an index, on a realistically large database.

The module seeds its own PostgreSQL database once (about 250,000 bags, 330,000
scans and 2,000 bills, then ANALYZE), makes real requests through the test
client as a dispatcher and as a biller, captures each SELECT, UPDATE and
DELETE they send, and asks PostgreSQL for its plan with the same parameters.
A sequential scan of ``bag``, ``scan`` or ``bill`` means the request's cost
grows with the table, which the targets forbid.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from flask_migrate import upgrade
from helpers import JSON, BagtrackClient
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from bagtrack import create_app, seeding
from bagtrack.extensions import db
from bagtrack.signin import forget_signed_in

pytestmark = pytest.mark.postgres

PARENTS = 8_000
BILLS = 2_000
LARGE_TABLES = {"bag", "scan", "bill"}
# An index that serves a query reads about the rows shown; an index scan that filters out most of
# what it reads (say, the primary key backwards looking for a rare status) is a scan in disguise.
ROWS_READ_LIMIT = 5_000
EXPLAINED = ("SELECT", "UPDATE", "DELETE", "WITH")


@dataclass
class Floor:
    """Rows of the seeded database that the requests name."""

    password: str
    area: str
    other_area: str
    open_parent: str
    complete_parent: str
    billed_parent: str
    other_area_parent: str
    packed_child: str
    child_prefix: str
    other_area_child: str
    open_bill: str
    closed_bill: str
    bill_of_billed_parent: str
    middle_scan_id: int
    middle_bag_id: int
    middle_bill_id: int


@pytest.fixture(scope="module")
def large_site(base_config):
    """An app on a database of its own, seeded once for the module and analysed."""
    url = make_url(base_config["SQLALCHEMY_DATABASE_URI"])
    url = url.set(database=f"{url.database}_plans")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{url.database}"'))
    app = create_app(
        {
            **base_config,
            "SQLALCHEMY_DATABASE_URI": url.render_as_string(hide_password=False),
            # Figures cached for this database must not be served to the other tests' database.
            "CACHE_KEY_PREFIX": f"bagtrack-plans-{uuid.uuid4().hex[:8]}:",
        }
    )
    forget_signed_in()
    try:
        with app.app_context():
            upgrade()
            report = seeding.seed(db.session, parents=PARENTS, areas=4, bills=BILLS, seed_value=3)
            floor = _find_floor(report.password)
            db.session.remove()
        yield app, floor
    finally:
        forget_signed_in()
        with app.app_context():
            db.engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()


def _find_floor(password: str) -> Floor:
    def one(sql: str, **parameters):
        return db.session.execute(text(sql), parameters).scalar_one()

    area_id = one("SELECT id FROM dispatch_area WHERE code = 'A1'")
    other_area_id = one("SELECT id FROM dispatch_area WHERE code = 'A2'")
    parent_in = (
        "SELECT qr FROM bag WHERE kind = 'parent' AND area_id = :area AND status = :status"
        " AND bill_id IS {billed} NULL AND child_count > 0 ORDER BY id LIMIT 1"
    )
    billed_parent = one(parent_in.format(billed="NOT"), area=area_id, status="complete")
    packed_child = one(
        "SELECT c.qr FROM bag c JOIN bag p ON p.id = c.parent_id WHERE p.qr = :qr ORDER BY c.id LIMIT 1",
        qr=one(parent_in.format(billed=""), area=area_id, status="complete"),
    )
    return Floor(
        password=password,
        area="A1",
        other_area="A2",
        open_parent=one(parent_in.format(billed=""), area=area_id, status="open"),
        complete_parent=one(parent_in.format(billed=""), area=area_id, status="complete"),
        billed_parent=billed_parent,
        other_area_parent=one(parent_in.format(billed=""), area=other_area_id, status="complete"),
        packed_child=packed_child,
        # What a person types to find a label: all but its last two digits (a hundred codes share it).
        child_prefix=packed_child[:-2],
        other_area_child=one(
            "SELECT qr FROM bag WHERE kind = 'child' AND area_id = :area ORDER BY id LIMIT 1", area=other_area_id
        ),
        open_bill=one("SELECT bill_no FROM bill WHERE status = 'open' AND parent_count < capacity ORDER BY id LIMIT 1"),
        closed_bill=one("SELECT bill_no FROM bill WHERE status = 'closed' ORDER BY id LIMIT 1"),
        bill_of_billed_parent=one(
            "SELECT b.bill_no FROM bill b JOIN bag p ON p.bill_id = b.id WHERE p.qr = :qr", qr=billed_parent
        ),
        middle_scan_id=one("SELECT (min(id) + max(id)) / 2 FROM scan"),
        middle_bag_id=one("SELECT (min(id) + max(id)) / 2 FROM bag"),
        middle_bill_id=one("SELECT (min(id) + max(id)) / 2 FROM bill"),
    )


def _client(app, username: str, password: str) -> BagtrackClient:
    app.test_client_class = BagtrackClient
    client = app.test_client()
    client.fetch_csrf_token()
    response = client.post("/login", data={"username": username, "password": password})
    assert response.status_code == 303, response.get_data(as_text=True)
    client.fetch_csrf_token()
    return client


@pytest.fixture(scope="module")
def dispatcher(large_site):
    app, floor = large_site
    return _client(app, f"demo-{floor.area.lower()}", floor.password)


@pytest.fixture(scope="module")
def biller(large_site):
    app, floor = large_site
    return _client(app, "demo-biller", floor.password)


@pytest.fixture
def floor(large_site):
    return large_site[1]


@pytest.fixture
def explained(large_site):
    """Capture the statements sent while the test makes its requests; then explain each and fail on a scan."""
    app, _floor = large_site
    with app.app_context():
        engine = db.engine
    statements: list[tuple[str, object]] = []

    def capture(_connection, _cursor, statement, parameters, _context, executemany):
        if not executemany and statement.lstrip().upper().startswith(EXPLAINED):
            statements.append((statement, parameters))

    @contextmanager
    def requests(*, before_explaining: str | None = None):
        """``before_explaining``: a change to the data, made (and undone) where the statements are explained."""
        event.listen(engine, "before_cursor_execute", capture)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert statements, "the requests sent no statement to explain"
        failures = []
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            if before_explaining:
                cursor.execute(before_explaining)
            for statement, parameters in statements:
                # ANALYZE runs the statement: writes are undone by the rollback below.
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
                faults = list(_faults(cursor.fetchone()[0][0]["Plan"]))
                if faults:
                    cursor.execute("EXPLAIN ANALYZE " + statement, parameters)
                    shown = "\n".join(line for (line,) in cursor.fetchall())
                    failures.append(f"{'; '.join(faults)}:\n{statement}\nparameters: {parameters!r}\n{shown}")
            connection.rollback()
        finally:
            connection.close()
        assert not failures, "\n\n".join(failures)

    return requests


def _faults(node: dict):
    """What in a plan makes a request's cost grow with a large table."""
    table = node.get("Relation Name")
    if table in LARGE_TABLES:
        loops = node.get("Actual Loops", 1)
        read = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
        if node["Node Type"] == "Seq Scan":
            yield f"Seq Scan on {table}"
        elif read > ROWS_READ_LIMIT:
            yield f"{node['Node Type']} on {table} reads {read} rows"
    for child in node.get("Plans", ()):
        yield from _faults(child)


def new_code(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().int % 10**9:09d}"


def expect(response, status: int, error: str | None = None):
    body = response.get_json(silent=True)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    if error is not None:
        assert body["error"] == error, body
    return body


def test_scanner_requests_use_indexes(explained, dispatcher, biller, floor):
    new_parent = f"SB{9_0000 + uuid.uuid4().int % 9_999:05d}"
    child = new_code("N")
    with explained():
        expect(dispatcher.get(f"/scan?parent={floor.open_parent}"), 200)
        expect(dispatcher.get(f"/scan?parent={floor.other_area_parent}"), 404)
        assert expect(dispatcher.post("/scan/parent", data={"qr": new_parent}, headers=JSON), 201)["created"]
        expect(dispatcher.post("/scan/parent", data={"qr": floor.open_parent}, headers=JSON), 200)
        expect(dispatcher.post("/scan/parent", data={"qr": floor.other_area_parent}, headers=JSON), 404)
        expect(biller.post("/scan/parent", data={"qr": floor.other_area_parent}, headers=JSON), 200)
        # A new child into an open parent: the floor's common case.
        assert expect(dispatcher.post("/scan/child", data={"parent": new_parent, "qr": child}, headers=JSON), 201)[
            "created"
        ]
        assert expect(dispatcher.post("/scan/child", data={"parent": new_parent, "qr": child}, headers=JSON), 200)[
            "duplicate"
        ]
        expect(dispatcher.post("/scan/undo", data={"parent": new_parent}, headers=JSON), 200)
        expect(dispatcher.post("/scan/undo", data={"parent": new_parent}, headers=JSON), 409, "nothing_to_undo")
        # The child left loose by the undo goes back in.
        expect(dispatcher.post("/scan/child", data={"parent": new_parent, "qr": child}, headers=JSON), 200)
        expect(biller.post("/scan/child", data={"parent": floor.other_area_parent, "qr": new_code("N")}, headers=JSON),
               409, "parent_full")  # fmt: skip
        for page in ({}, JSON):
            refusals = [
                ({"parent": floor.complete_parent, "qr": new_code("N")}, 409, "parent_full"),
                ({"parent": floor.billed_parent, "qr": new_code("N")}, 409, "parent_on_bill"),
                ({"parent": new_parent, "qr": floor.packed_child}, 409, "child_in_other_parent"),
                ({"parent": new_parent, "qr": floor.other_area_child}, 409, "child_in_other_parent"),
                ({"parent": floor.other_area_parent, "qr": new_code("N")}, 404, "parent_not_found"),
                ({"parent": "SB99999", "qr": new_code("N")}, 404, "parent_not_found"),
                ({"parent": new_parent, "qr": floor.open_parent}, 409, "wrong_kind"),
            ]
            for form, status, error in refusals:
                expect(dispatcher.post("/scan/child", data=form, headers=page), status, error if page else None)
            expect(dispatcher.post("/scan/undo", data={"parent": floor.billed_parent}, headers=page), 409)


def test_dashboard_and_scan_log_use_indexes(explained, dispatcher, biller, floor):
    with explained():
        for user in (dispatcher, biller):
            expect(user.get("/"), 200)
            expect(user.get("/api/stats"), 200)
            first = expect(user.get("/api/scans"), 200)
            expect(user.get(f"/api/scans?before={first['next_before']}&limit=200"), 200)
            expect(user.get(f"/api/scans?before={floor.middle_scan_id}"), 200)
            expect(user.get("/scans"), 200)
            expect(user.get(f"/scans?before={floor.middle_scan_id}"), 200)


def test_dashboard_charts_and_reports_use_indexes(explained, dispatcher, biller, floor):
    """Charts and reports read the per-hour tally and day-bounded index ranges, never the whole log."""
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    with explained():
        for user in (dispatcher, biller):
            expect(user.get("/dashboard/live"), 200)
            for day in (today, today - timedelta(days=1)):
                expect(user.get(f"/api/reports/operators?day={day}"), 200)
                expect(user.get(f"/reports/operators?day={day}"), 200)
        expect(biller.get(f"/api/reports/operators?area={floor.other_area}"), 200)
        for day in (today, today - timedelta(days=1)):
            expect(biller.get(f"/api/reports/daily?day={day}"), 200)
            expect(biller.get(f"/reports/daily?day={day}&format=csv"), 200)


def _relations(node: dict):
    """Each table and index a plan reads, with how: ``(table, node type, index)`` (a bitmap's index: no table)."""
    if "Relation Name" in node or "Index Name" in node:
        yield node.get("Relation Name"), node["Node Type"], node.get("Index Name")
    for child in node.get("Plans", ()):
        yield from _relations(child)


@pytest.fixture
def planned(large_site):
    """Run requests and return what the plans of their statements read: ``{(table, node type, index)}``."""
    app, _floor = large_site
    with app.app_context():
        engine = db.engine

    def read_by(make_requests) -> set[tuple]:
        statements = []

        def capture(_connection, _cursor, statement, parameters, _context, executemany):
            if not executemany and statement.lstrip().upper().startswith("SELECT"):
                statements.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            make_requests()
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            read = set()
            for statement, parameters in statements:
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
                read |= set(_relations(cursor.fetchone()[0][0]["Plan"]))
            connection.rollback()
        finally:
            connection.close()
        return read

    return read_by


def test_operator_report_reads_the_hourly_tally_not_the_scan_log(planned, dispatcher, biller, floor):
    """First and last scans included: the report is one index range of the per-hour tally."""
    from datetime import UTC, datetime

    today = datetime.now(UTC).date()

    def reports():
        for user in (dispatcher, biller):
            body = expect(user.get(f"/api/reports/operators?day={today}"), 200)
            scanners = [row for row in body["operators"] if row["accepted"] or row["rejected"]]
            assert scanners and all(row["first_at"] and row["last_at"] for row in scanners)
            expect(user.get(f"/reports/operators?day={today}&format=csv"), 200)
        expect(biller.get(f"/api/reports/operators?day={today}&area={floor.other_area}"), 200)

    read = planned(reports)

    assert {table for table, _how, _index in read} & {"scan", "bag", "bill"} == set()
    assert "pk_tally_hour" in {index for _table, _how, index in read}
    assert ("tally_hour", "Seq Scan", None) not in read


def test_daily_summary_reads_one_day_of_bills_and_audit_entries(large_site, planned, biller):
    """The bills closed that day by the index on their closing time, who closed them by the audit log's on time."""
    app, _floor = large_site
    with app.app_context():
        closed_at = db.session.scalar(text("SELECT max(closed_at) FROM bill WHERE status = 'closed'"))
        db.session.remove()

    def reports():
        body = expect(biller.get(f"/api/reports/daily?day={closed_at.date()}"), 200)
        assert body["bills"]
        expect(biller.get(f"/reports/daily?day={closed_at.date()}&format=xlsx"), 200)

    read = planned(reports)

    assert {table for table, _how, _index in read} & {"scan", "bag"} == set()
    assert {"ix_bill_closed_at", "ix_audit_log_at"} <= {index for _table, _how, index in read}
    assert {("bill", "Seq Scan", None), ("audit_log", "Seq Scan", None)} & read == set()


BAG_FILTERS = [
    "",
    "kind=parent",
    "kind=child",
    "status=open",
    "status=complete",
    "status=packed",
    "status=loose",
    "kind=parent&status=open",
    "kind=child&status=loose",
    "area={other_area}",
    "area={other_area}&kind=parent",
    "area={other_area}&status=open",
    "area={other_area}&kind=parent&status=complete",
    "bill={open_bill}",
    "bill={open_bill}&kind=parent",
    "q=SB0001",
    "q={open_parent}",
    "q={packed_child}",
    "q={child_prefix}",
    "q={child_prefix}&kind=child&status=packed",
    "q={other_area_parent}&area={other_area}",
    "q=ZZZZ",
    "area=NOWHERE",
    "bill=NO-SUCH-BILL",
]


@pytest.mark.parametrize("role", ["dispatcher", "biller"])
def test_bag_list_filters_use_indexes(explained, request, floor, role):
    user = request.getfixturevalue(role)
    with explained():
        for query in BAG_FILTERS:
            query = query.format(**vars(floor))
            expect(user.get(f"/bags?{query}"), 200)
            expect(user.get(f"/bags?{query}&before={floor.middle_bag_id}"), 200)


def test_bag_list_broad_prefix_of_old_codes_reads_only_the_matches(explained, biller, floor):
    # PostgreSQL alone would walk the primary key back from the newest bag: these matches are all old.
    with explained():
        found = biller.get("/bags?q=SB00")
        expect(found, 200)
        expect(biller.get(f"/bags?q=SB00&area={floor.other_area}"), 200)
        expect(biller.get("/bags?q=SB00&kind=parent&status=complete"), 200)
    assert "SB00" in found.get_data(as_text=True)


def test_bag_pages_use_indexes(explained, dispatcher, biller, floor):
    with explained():
        for user in (dispatcher, biller):
            for qr in (floor.open_parent, floor.billed_parent, floor.packed_child):
                expect(user.get(f"/bags/{qr}"), 200)
                body = expect(user.get(f"/api/bags/{qr}", headers=JSON), 200)
                assert body["qr"] == qr
            expect(user.get("/bags/SB99999"), 404)
        expect(dispatcher.get(f"/bags/{floor.other_area_parent}"), 404)
        expect(dispatcher.get(f"/api/bags/{floor.other_area_child}"), 404)


def test_bill_pages_and_loading_use_indexes(explained, biller, floor):
    with explained():
        expect(biller.get("/bills"), 200)
        expect(biller.get("/bills?status=open"), 200)
        expect(biller.get(f"/bills?status=closed&before={floor.middle_bill_id}"), 200)
        expect(biller.get(f"/bills?before={floor.middle_bill_id}"), 200)
        expect(biller.get(f"/bills/{floor.open_bill}"), 200)
        expect(biller.get(f"/bills/{floor.bill_of_billed_parent}"), 200)
        load = f"/bills/{floor.open_bill}/parents"
        assert not expect(biller.post(load, data={"qr": floor.complete_parent}, headers=JSON), 200)["duplicate"]
        assert expect(biller.post(load, data={"qr": floor.complete_parent}, headers=JSON), 200)["duplicate"]
        for page in ({}, JSON):
            expect(biller.post(load, data={"qr": floor.billed_parent}, headers=page), 409)
            expect(biller.post(load, data={"qr": "SB99999"}, headers=page), 404)
            expect(biller.post(f"/bills/{floor.closed_bill}/parents", data={"qr": floor.open_parent}, headers=page),
                   409)  # fmt: skip
            expect(biller.post("/bills/NO-SUCH-BILL/parents", data={"qr": floor.open_parent}, headers=page), 404)


SCAN_FILTERS = [
    "user=demo-{area_lower}",
    "user=demo-biller&outcome=ok",
    "user=nobody-at-all",
    "outcome=ok",
    "outcome=rejected",
    "reason=parent_full",
    "reason=duplicate",
    "reason=invalid_qr&outcome=rejected",
    "kind=parent",
    "kind=child",
    "kind=load",
    "kind=undo",
    "kind=remove",
    "area={other_area}",
    "area={other_area}&kind=load",
    "area={other_area}&outcome=rejected",
    "from={middle_day}&to={middle_day}",
    "from={middle_day}",
    "to={middle_day}",
    "from={middle_day}&to={middle_day}&outcome=rejected",
    "from={middle_day}&to={middle_day}&user=demo-{area_lower}",
]


@pytest.fixture
def middle_day(large_site, floor) -> str:
    app, _floor = large_site
    with app.app_context():
        day = db.session.scalar(text("SELECT at::date FROM scan WHERE id >= :id ORDER BY id LIMIT 1"),
                                {"id": floor.middle_scan_id})  # fmt: skip
        db.session.remove()
    return day.isoformat()


@pytest.mark.parametrize("role", ["dispatcher", "biller"])
def test_scan_log_filters_use_indexes(explained, request, floor, middle_day, role):
    user = request.getfixturevalue(role)
    names = {**vars(floor), "area_lower": floor.area.lower(), "middle_day": middle_day}
    with explained():
        for query in SCAN_FILTERS:
            query = query.format(**names)
            expect(user.get(f"/scans?{query}"), 200)
            expect(user.get(f"/scans?{query}&before={floor.middle_scan_id}"), 200)
            expect(user.get(f"/api/scans?{query}"), 200)


# The newest scans all accepted children, as on a busy floor where refusals are old news.
NEWEST_SCANS_ACCEPTED = (
    "INSERT INTO scan (at, kind, outcome, qr, bag_id, parent_id, user_id, area_id)"
    " SELECT at, kind, outcome, qr, bag_id, parent_id, user_id, area_id"
    " FROM (SELECT * FROM scan WHERE outcome = 'ok' AND kind = 'child' ORDER BY id DESC LIMIT 1) AS newest,"
    " generate_series(1, 20000)"
)


@pytest.mark.parametrize("role", ["dispatcher", "biller"])
def test_scan_log_reason_filter_reads_its_index_when_the_newest_scans_are_accepted(explained, request, role):
    user = request.getfixturevalue(role)
    with explained(before_explaining=NEWEST_SCANS_ACCEPTED):
        for reason in ("duplicate", "parent_full"):
            expect(user.get(f"/scans?reason={reason}"), 200)
            expect(user.get(f"/api/scans?reason={reason}"), 200)


def test_bill_list_filters_use_indexes(explained, biller, floor, middle_day):
    with explained():
        for query in (
            f"q={floor.open_bill}",
            f"q={floor.open_bill[:-2]}",
            "q=BL",
            "q=hamburg",
            "q=Hamburg port",
            "q=nowhere",
            "status=cancelled",
            "status=closed&q=vienna",
            f"from={middle_day}&to={middle_day}",
            f"from={middle_day}&status=open",
        ):
            expect(biller.get(f"/bills?{query}"), 200)
            expect(biller.get(f"/bills?{query}&before={floor.middle_bill_id}"), 200)


def test_office_paper_lookup_and_corrections_use_indexes(explained, biller, floor):
    child = expect(biller.get(f"/api/bags/{floor.complete_parent}"), 200)["children"][0]
    with explained():
        expect(biller.get(f"/bills/{floor.bill_of_billed_parent}/print"), 200)
        expect(biller.get("/labels?start=SB00001&count=48"), 200)
        for code in (floor.packed_child, floor.open_bill, "NOTHING-HERE"):
            assert biller.get(f"/lookup?q={code}").status_code == 303
        expect(biller.get(f"/api/bags/{floor.packed_child}"), 200)
        remove = f"/bags/{floor.complete_parent}/children/{child}/remove"
        expect(biller.post(remove, data={"reason": "checking plans"}, headers=JSON), 200)
        expect(biller.post(f"/bags/{floor.complete_parent}/reopen", data={"reason": "plans"}, headers=JSON), 200)
        edit = f"/bills/{floor.open_bill}/edit"
        expect(biller.post(edit, data={"destination": "Hamburg dock 7", "reason": "plans"}, headers=JSON), 200)
        expect(biller.post(f"/bills/{floor.open_bill}/cancel", data={"reason": "plans"}, headers=JSON), 200)


def test_large_site_is_large(large_site):
    """The plans above mean something only on tables big enough for PostgreSQL to prefer an index."""
    app, _floor = large_site
    with app.app_context():
        bags = db.session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'bag'"))
        scans = db.session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'scan'"))
        db.session.remove()
    assert bags > 200_000 and scans > 250_000
