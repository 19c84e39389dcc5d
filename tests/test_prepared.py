"""A new child's statement is planned once per connection, and a connection that lost its plan is replaced."""

from __future__ import annotations

import pytest
from helpers import JSON, log_in, pool_config
from sqlalchemy import func, select, text

from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import Bag, Scan

pytestmark = pytest.mark.postgres


def one_connection_app(make_app, database_url, **overrides):
    """An app whose requests all run on one pooled connection, so the test can look at its session."""
    return make_app(**pool_config(database_url, pool_size=1, max_overflow=0), **overrides)


def prepared_statements(app) -> dict[str, int]:
    """What the app's one connection has prepared, and how often each ran."""
    with app.app_context():
        rows = db.session.execute(text("SELECT name, generic_plans + custom_plans FROM pg_prepared_statements")).all()
        db.session.rollback()
    return dict(rows)


def on_the_connection(app, statement: str) -> None:
    with app.app_context():
        db.session.execute(text(statement))
        db.session.commit()


def scan_children(scanner, parent_qr: str, *codes: str) -> None:
    for code in codes:
        response = scanner.post("/scan/child", data={"parent": parent_qr, "qr": code}, headers=JSON)
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.get_json()["duplicate"] is False


def children_and_scans(parent_qr: str) -> tuple[int, int, int]:
    """The parent's kept count, its children, and the accepted child scans into it, read fresh."""
    db.session.rollback()
    parent = db.session.scalars(select(Bag).where(Bag.qr == parent_qr).execution_options(populate_existing=True)).one()
    children = db.session.scalar(select(func.count()).select_from(Bag).where(Bag.parent_id == parent.id))
    scans = db.session.scalar(
        select(func.count())
        .select_from(Scan)
        .where(Scan.parent_id == parent.id, Scan.kind == "child", Scan.outcome == "ok")
    )
    return parent.child_count, children, scans


def test_new_children_reuse_one_prepared_statement(make_app, make_user, make_parent, database_url):
    app = one_connection_app(make_app, database_url)
    parent = make_parent()
    scanner = log_in(app, make_user())
    scan_children(scanner, parent.qr, *(f"PREP{number:04d}" for number in range(6)))
    # A dispatcher's scans are scoped to their area: one statement, prepared once, run six times.
    assert prepared_statements(app) == {"bagtrack_child_scan_in_area_1": 6}
    assert children_and_scans(parent.qr) == (6, 6, 6)
    # Kinds, statuses and counts are written into the statement: its parameters are the scan's own values.
    with app.app_context():
        types = db.session.scalar(text("SELECT parameter_types::text FROM pg_prepared_statements"))
        db.session.rollback()
    # The moment, child, user, parent, area, day, shard and hour.
    assert len(types.strip("{}").split(",")) == 8, types


def test_a_connection_that_lost_its_prepared_statement_is_replaced(make_app, make_user, make_parent, database_url):
    app = one_connection_app(make_app, database_url)
    parent = make_parent()
    scanner = log_in(app, make_user())
    scan_children(scanner, parent.qr, "LOST0001")
    on_the_connection(app, "DEALLOCATE ALL")
    assert prepared_statements(app) == {}
    # The scan fails on the old connection, is retried on a new one and stored once.
    scan_children(scanner, parent.qr, "LOST0002", "LOST0003")
    assert prepared_statements(app) == {"bagtrack_child_scan_in_area_1": 2}
    assert children_and_scans(parent.qr) == (3, 3, 3)
    assert find_violations(db.session) == []


def test_a_plan_a_migration_made_stale_is_prepared_again(make_app, make_user, make_parent, database_url):
    app = one_connection_app(make_app, database_url)
    parent_qr = make_parent().qr
    scanner = log_in(app, make_user())
    scan_children(scanner, parent_qr, "STALE001")
    # The statement returns the area's name: a new type for that column changes the rows it returns.
    length = db.session.scalar(
        text(
            "SELECT character_maximum_length FROM information_schema.columns"
            " WHERE table_name = 'dispatch_area' AND column_name = 'name'"
        )
    )
    db.session.rollback()
    on_the_connection(app, f"ALTER TABLE dispatch_area ALTER COLUMN name TYPE varchar({length + 1})")
    try:
        scan_children(scanner, parent_qr, "STALE002")
    finally:
        on_the_connection(app, f"ALTER TABLE dispatch_area ALTER COLUMN name TYPE varchar({length})")
    assert children_and_scans(parent_qr) == (2, 2, 2)
    assert find_violations(db.session) == []


def test_behind_pgbouncer_the_statement_is_sent_whole(make_app, make_user, make_parent, database_url):
    app = one_connection_app(make_app, database_url, BAGTRACK_DB_PGBOUNCER=True)
    parent = make_parent()
    scanner = log_in(app, make_user())
    scan_children(scanner, parent.qr, "WHOLE001", "WHOLE002")
    assert prepared_statements(app) == {}
    assert children_and_scans(parent.qr) == (2, 2, 2)
