"""Migrations that fill new columns from existing rows: the filled values equal a recount."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bagtrack import create_app, ledger
from bagtrack.extensions import db

BEFORE_TALLY_HOUR = "c5126cc6a89b"
# Half an hour off UTC: local hours start at :30 UTC, so quarters must be gathered into the right hour.
ZONE = "Asia/Kolkata"


@pytest.fixture
def scratch_database(base_config, tmp_path):
    """An empty database of its own (PostgreSQL beside the test database, or a SQLite file)."""
    url = make_url(base_config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "postgresql":
        yield f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
        return
    url = url.set(database=f"{url.database}_migrations")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{url.database}"'))
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()


def test_per_hour_tally_gets_first_and_last_scan_of_the_existing_log(base_config, scratch_database, monkeypatch):
    monkeypatch.setenv("BAGTRACK_TIMEZONE", ZONE)
    app = create_app({**base_config, "SQLALCHEMY_DATABASE_URI": scratch_database, "BAGTRACK_TIMEZONE": ZoneInfo(ZONE)})
    start = datetime(2026, 11, 30, 4, 20)  # 09:50 local: the hour's rows straddle a UTC hour
    with app.app_context():
        upgrade(revision=BEFORE_TALLY_HOUR)
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO dispatch_area (id, code, name, created_at) VALUES (1, 'NORTH', 'North', :at)"),
                {"at": start},
            )
            connection.execute(
                text(
                    "INSERT INTO scan (at, kind, outcome, reason, qr, area_id)"
                    " VALUES (:at, 'child', :outcome, :reason, 'C1', :area_id)"
                ),
                [
                    {
                        "at": start + timedelta(minutes=7 * number, microseconds=number),
                        "outcome": "rejected" if number % 5 == 4 else "ok",
                        "reason": "wrong_kind" if number % 5 == 4 else None,
                        "area_id": 1 if number % 3 else None,
                    }
                    for number in range(40)
                ],
            )
        upgrade()
        with db.engine.connect() as connection:
            counted = {
                key: (found.scans, found.first_at, found.last_at)
                for key, found in ledger.scans_by_hour(connection).items()
            }
            kept = {
                (hour, area_id, user_id, reason): (scans, first_at, last_at)
                for hour, area_id, user_id, reason, scans, first_at, last_at in connection.execute(
                    text("SELECT hour, area_id, user_id, reason, scans, first_at, last_at FROM tally_hour").columns(
                        hour=db.DateTime, first_at=db.DateTime, last_at=db.DateTime
                    )
                )
            }
        db.engine.dispose()

    assert kept == counted
    # Forty scans seven minutes apart, from 09:50 local to 14:23, span six local hours, each in up to three rows.
    assert len({hour for hour, *_ in kept}) == 6 and len(kept) > 6
    assert all(hour.minute == 30 for hour, *_ in kept)
    assert min(first for _scans, first, _last in kept.values()) == start
