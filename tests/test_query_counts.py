"""No page issues a query per row it shows, and the scan hot path stays a handful of statements.

Each counted request starts as a request does in production: a new database
session and, at worst, the signed-in user to load again (the few-second user
snapshot has expired) and the dashboard figures to recompute. SQLite's ``BEGIN IMMEDIATE`` is left out of the counts;
PostgreSQL's per-connection timeouts go through the driver directly and never
show here. A new child is one statement on PostgreSQL and four on SQLite.
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg2.extensions
import pytest
from helpers import JSON, listening, statements_sent
from sqlalchemy import select

from bagtrack import billing
from bagtrack.extensions import cache as figures_cache
from bagtrack.extensions import db
from bagtrack.models import Bag, User
from bagtrack.signin import forget_signed_in


@pytest.fixture
def counted(app):
    """``with counted() as sent:`` collects the statements the requests inside send."""

    @contextmanager
    def count():
        db.session.remove()
        forget_signed_in()
        # Figures cached by an earlier request (floor scans leave them cached) would make this one cheaper.
        figures_cache.clear()
        app.extensions.get("bagtrack.figures", {}).get("seen", {}).clear()
        with statements_sent(app, lambda statement: not statement.lstrip().upper().startswith("BEGIN")) as sent:
            yield sent

    return count


def same_count(few: list[str], many: list[str]) -> None:
    assert len(few) == len(many), "statements grew with the rows shown:\n" + "\n---\n".join(many)


@pytest.fixture
def biller(make_user, login_as):
    return login_as(make_user("office", role="biller", area=None))


@pytest.fixture
def dispatcher(make_user, login_as):
    return login_as(make_user("floor", role="dispatcher", area="NORTH"))


def get_page(counted, client, path: str, *, headers=None, status: int = 200):
    with counted() as sent:
        response = client.get(path, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response, sent


def test_bag_list_costs_the_same_for_5_and_50_bags(counted, biller, make_parent):
    first = make_parent(children=4, area="NORTH")
    few_page, few = get_page(counted, biller, "/bags")
    second = make_parent(children=29, area="SOUTH")
    make_parent(children=14, area="SOUTH")
    many_page, many = get_page(counted, biller, "/bags")

    assert few_page.get_data(as_text=True).count('href="/bags/') == 5
    assert many_page.get_data(as_text=True).count('href="/bags/') == 50
    assert first.qr in many_page.get_data(as_text=True) and second.qr in many_page.get_data(as_text=True)
    same_count(few, many)
    # Filters and the next page cost no more per row either.
    _page, filtered = get_page(counted, biller, "/bags?kind=child&area=SOUTH")
    _page, paged = get_page(counted, biller, f"/bags?before={second.id}")
    assert len(filtered) <= len(many) + 1 and len(paged) == len(many)


def test_bag_pages_cost_the_same_for_3_and_30_children(counted, biller, make_parent):
    small = make_parent(children=3)
    large = make_parent(children=30)

    few_api, few = get_page(counted, biller, f"/api/bags/{small.qr}", headers=JSON)
    many_api, many = get_page(counted, biller, f"/api/bags/{large.qr}", headers=JSON)
    assert len(few_api.get_json()["children"]) == 3 and len(many_api.get_json()["children"]) == 30
    assert len(many_api.get_json()["scans"]) == 20
    same_count(few, many)

    _page, few_html = get_page(counted, biller, f"/bags/{small.qr}")
    many_html_page, many_html = get_page(counted, biller, f"/bags/{large.qr}")
    assert all(child in many_html_page.get_data(as_text=True) for child in many_api.get_json()["children"])
    same_count(few_html, many_html)


def test_a_billed_bags_page_reads_it_its_holders_and_its_scans_in_three_statements(app, biller, make_parent, make_bill):
    """A bag's page on the floor: the bag with its bill, its parent with the bill (a child's) or its children (a
    parent's), and its latest scans; one statement each."""
    parent = make_parent("SB00001", children=2)
    make_bill("B-8")
    factory = db.session.scalars(select(User).where(User.username == "factory")).one()
    billing.load_parent(db.session, factory, "B-8", parent.qr, confirmed=True)
    child = db.session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id).order_by(Bag.qr)).first()
    biller.get("/bags/SB00001")  # the user's snapshot is read once, not per page
    for qr in ("SB00001", child):
        with statements_sent(app, lambda statement: statement.lstrip().upper().startswith("SELECT")) as statements:
            page = biller.get(f"/bags/{qr}")
        assert page.status_code == 200
        assert '<a href="/bills/B-8">B-8</a>' in page.get_data(as_text=True)
        assert len(statements) == 3, "\n---\n".join(s[:200] for s in statements)


def test_bill_page_costs_the_same_for_2_and_20_parents(counted, biller, make_parent, make_bill, make_user):
    office = make_user("loader", role="biller", area=None)
    bill = make_bill("B-COUNT", capacity=30)
    parents = [make_parent(children=1, area="NORTH" if number % 2 else "SOUTH") for number in range(20)]
    for parent in parents[:2]:
        billing.load_parent(db.session, office, bill.bill_no, parent.qr, confirmed=True)
    few_page, few = get_page(counted, biller, f"/bills/{bill.bill_no}")
    for parent in parents[2:]:
        billing.load_parent(db.session, office, bill.bill_no, parent.qr, confirmed=True)
    many_page, many = get_page(counted, biller, f"/bills/{bill.bill_no}")

    assert few_page.get_data(as_text=True).count("/remove") == 2
    assert many_page.get_data(as_text=True).count("/remove") == 20
    same_count(few, many)


def test_bill_list_costs_the_same_for_2_and_20_bills(counted, biller, make_bill):
    for number in range(2):
        make_bill(f"B-{number}")
    few_page, few = get_page(counted, biller, "/bills")
    for number in range(2, 20):
        make_bill(f"B-{number}")
    many_page, many = get_page(counted, biller, "/bills")

    assert "B-1" in few_page.get_data(as_text=True) and "B-19" in many_page.get_data(as_text=True)
    same_count(few, many)


# (path, rows shown once there are fifty scans): the dashboard shows the latest twenty.
SCAN_LOG_PAGES = [("/", 20), ("/scans", 50), ("/api/scans", 50), ("/api/scans?limit=200", 50)]


def shown_scans(page, path: str) -> int:
    if path.startswith("/api/"):
        return len(page.get_json()["scans"])
    return page.get_data(as_text=True).count("data-scan-id=")


@pytest.mark.parametrize(("path", "shown"), SCAN_LOG_PAGES)
def test_scan_log_pages_cost_the_same_for_5_and_50_scans(counted, biller, dispatcher, make_parent, path, shown):
    headers = JSON if path.startswith("/api/") else None
    users = (biller, dispatcher)
    make_parent(children=4)  # five scans: the parent and four children
    few_pages = [get_page(counted, user, path, headers=headers) for user in users]
    make_parent(children=29)  # forty-five more in two parents (a parent holds thirty)
    make_parent(children=14)
    many_pages = [get_page(counted, user, path, headers=headers) for user in users]

    for (few_page, few), (many_page, many) in zip(few_pages, many_pages, strict=True):
        assert shown_scans(few_page, path) == 5
        assert shown_scans(many_page, path) == shown
        same_count(few, many)


def test_admin_users_list_costs_the_same_for_2_and_20_users(counted, make_user, login_as):
    admin = login_as(make_user("chief", role="admin", area=None))
    make_user("worker-0", area="NORTH")
    few_page, few = get_page(counted, admin, "/admin/")
    for number in range(1, 19):
        make_user(f"worker-{number}", area="SOUTH" if number % 2 else "NORTH")
    many_page, many = get_page(counted, admin, "/admin/")

    assert "worker-0" in few_page.get_data(as_text=True) and "worker-18" in many_page.get_data(as_text=True)
    same_count(few, many)


# The scan endpoints' budgets, statement by statement (the signed-in user's load included):
# a new child into an open parent: the user, then on PostgreSQL one statement that counts the child
# in the parent, inserts it, logs the scan and adds it to the tally; elsewhere those are four.
NEW_CHILD = {"postgresql": 2, "sqlite": 5}
# Every other accepted scan's log row and tally rows are one statement on PostgreSQL, two on SQLite.
# A double-fired child: the count is given back, parent and child are read locked, then log and tally.
DUPLICATE_CHILD = {"postgresql": 7, "sqlite": 8}
# Refusals: the user, the checks' reads, then the refusal's log and tally rows in a transaction of their own.
# A full parent is turned away by the UPDATE; a child packed elsewhere costs the optimistic insert and the
# other parent's name as well.
PARENT_FULL = {"postgresql": 6, "sqlite": 6}
CHILD_IN_OTHER_PARENT = {"postgresql": 9, "sqlite": 9}
# A parent scan: the user, then on PostgreSQL one statement that reads the parent, logs and counts the
# scan and returns its children for the answer; elsewhere the look-up, log, tally and children are four.
# A new parent: that statement finding nothing (PostgreSQL), the look-up, its INSERT, the read of the row
# it made, log and tally; it has no children to read.
PARENT_SCAN = {"postgresql": 2, "sqlite": 5}
NEW_PARENT = {"postgresql": 6, "sqlite": 6}
# Undo: the user, parent and child read locked, the two rows changed, log and tally.
UNDO = {"postgresql": 6, "sqlite": 7}
# Loading a parent onto a bill: the user, bill and parent locked, then on PostgreSQL one statement that
# changes both rows, logs and counts the scan and writes the audit entry; elsewhere those are five.
LOAD = {"postgresql": 4, "sqlite": 8}


def post_counted(counted, client, path: str, form: dict, status: int) -> list[str]:
    with counted() as sent:
        response = client.post(path, data=form, headers=JSON)
    assert response.status_code == status, response.get_json()
    # PostgreSQL writes the hour's tally row in the tally statement itself; SQLite cannot and sends it after.
    # A connection's first new child prepares the statement it then executes: once per connection, not per scan.
    return [statement for statement in sent if not statement.startswith(("INSERT INTO tally_hour", "PREPARE "))]


def within(sent: list[str], ceiling: int) -> None:
    assert len(sent) <= ceiling, f"{len(sent)} statements, at most {ceiling} expected:\n" + "\n---\n".join(sent)


def budgets(app, *names: str) -> list[int]:
    """The statement budgets ``names`` (of this module) on the app's database."""
    with app.app_context():
        dialect = db.engine.dialect.name
    return [globals()[name][dialect] for name in names]


def test_scan_endpoints_stay_within_their_statement_budgets(app, counted, dispatcher, make_parent):
    new_child, duplicate, full_parent, elsewhere, parent_scan, new_parent, undo = budgets(
        app, "NEW_CHILD", "DUPLICATE_CHILD", "PARENT_FULL", "CHILD_IN_OTHER_PARENT", "PARENT_SCAN", "NEW_PARENT", "UNDO"
    )
    parent = make_parent(area="NORTH", children=29)
    full = make_parent(area="NORTH", children=30)

    within(post_counted(counted, dispatcher, "/scan/parent", {"qr": "SB77777"}, 201), new_parent)
    within(post_counted(counted, dispatcher, "/scan/parent", {"qr": parent.qr}, 200), parent_scan)
    within(post_counted(counted, dispatcher, "/scan/child", {"parent": "SB77777", "qr": "NEWKID01"}, 201), new_child)
    # The child that fills the parent completes it in the same statements.
    within(post_counted(counted, dispatcher, "/scan/child", {"parent": parent.qr, "qr": "NEWKID02"}, 201), new_child)
    within(post_counted(counted, dispatcher, "/scan/child", {"parent": "SB77777", "qr": "NEWKID01"}, 200), duplicate)
    within(post_counted(counted, dispatcher, "/scan/child", {"parent": full.qr, "qr": "NEWKID03"}, 409), full_parent)
    within(
        post_counted(counted, dispatcher, "/scan/child", {"parent": "SB77777", "qr": "NEWKID02"}, 409),
        elsewhere,
    )
    within(post_counted(counted, dispatcher, "/scan/undo", {"parent": "SB77777"}, 200), undo)


def test_a_parent_scan_and_a_bill_load_cost_exactly_their_budgets(app, counted, biller, make_parent, make_bill):
    """On PostgreSQL an accepted scan's log row and tally rows go in one statement: one more fails this."""
    parent_scan, load = budgets(app, "PARENT_SCAN", "LOAD")
    parent = make_parent(area="NORTH", children=30)
    bill = make_bill("LOADCOUNT")
    sent = post_counted(counted, biller, "/scan/parent", {"qr": parent.qr}, 200)
    assert len(sent) == parent_scan, "\n---\n".join(sent)
    sent = post_counted(counted, biller, f"/bills/{bill.bill_no}/parents", {"qr": parent.qr}, 200)
    assert len(sent) == load, "\n---\n".join(sent)


def test_budgets_are_the_real_cost_not_a_loose_bound(app, counted, dispatcher, make_parent):
    """The new-child budget is exact: a regression that adds one statement to the hot path fails."""
    parent = make_parent(area="NORTH")
    sent = post_counted(counted, dispatcher, "/scan/child", {"parent": parent.qr, "qr": "EXACT01"}, 201)
    assert len(sent) == budgets(app, "NEW_CHILD")[0], "\n---\n".join(sent)


@contextmanager
def transaction_states(app):
    """``with transaction_states(app) as states:`` the server's transaction state after each statement sent inside.

    Read off the connection itself (psycopg2 asks libpq, which tracks what the
    server reported): ``IDLE`` after a statement means no transaction block
    was open, so no ``BEGIN`` went before it and no ``ROLLBACK`` follows.
    """
    names = {
        psycopg2.extensions.TRANSACTION_STATUS_IDLE: "IDLE",
        psycopg2.extensions.TRANSACTION_STATUS_INTRANS: "INTRANS",
    }
    states: list[str] = []

    def after(connection, _cursor, _statement, *_args):
        status = connection.connection.dbapi_connection.get_transaction_status()
        states.append(names.get(status, str(status)))

    with listening(app, "after_cursor_execute", after):
        yield states


@pytest.mark.postgres
def test_pages_read_outside_a_transaction_block_and_writes_keep_theirs(app, biller, make_parent, make_bill):
    """A page's reads cost no BEGIN and no ROLLBACK round trip; a scan's statements still share one transaction."""
    parent = make_parent(area="NORTH", children=3)
    make_bill("AUTOREAD")
    for path in ("/", "/dashboard/live", f"/bags/{parent.qr}", "/bills/AUTOREAD", "/scans"):
        db.session.remove()
        forget_signed_in()  # the user's own read counts too
        with transaction_states(app) as states:
            response = biller.get(path)
        assert response.status_code == 200, path
        assert states and set(states) == {"IDLE"}, (path, states)

    db.session.remove()
    with transaction_states(app) as states:
        response = biller.post("/scan/parent", data={"qr": parent.qr}, headers=JSON)
    assert response.status_code == 200, response.get_json()
    assert states and set(states) == {"INTRANS"}, states
    # The pool gave the connection back in its usual mode: the next write is one transaction again.
    with transaction_states(app) as states:
        response = biller.post("/scan/child", data={"parent": parent.qr, "qr": "AUTOKID1"}, headers=JSON)
    assert response.status_code == 201, response.get_json()
    assert states and set(states) == {"INTRANS"}, states
