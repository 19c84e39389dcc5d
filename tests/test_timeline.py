"""A time range maps onto an id range: the search agrees with reading every row."""

from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from bagtrack.extensions import db
from bagtrack.models import Scan
from bagtrack.timeline import first_id_from

START = datetime(2026, 12, 1, 6, 0)


def write_log(rows: list[tuple[int, datetime]]) -> None:
    db.session.execute(Scan.__table__.delete())
    if rows:
        db.session.execute(
            insert(Scan), [{"id": id_, "at": at, "kind": "child", "outcome": "ok", "qr": "C1"} for id_, at in rows]
        )
    db.session.flush()


def splits(rows: list[tuple[int, datetime]], moment: datetime, first: int) -> bool:
    """Every row before ``first`` is earlier than ``moment``, every row from it on is not; no row is skipped."""
    return all((at >= moment) == (id_ >= first) for id_, at in rows) and first <= max(id_ for id_, _ in rows) + 1


def test_an_empty_log_starts_at_one(app):
    write_log([])
    assert first_id_from(db.session, Scan.id, Scan.at, START) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=60),
    steps=st.lists(st.integers(min_value=0, max_value=7200), min_size=60, max_size=60),
    probes=st.lists(st.integers(min_value=-3600, max_value=60 * 7200 + 3600), min_size=1, max_size=6),
)
def test_the_first_id_of_a_moment_is_the_first_row_at_or_after_it(app, gaps, steps, probes):
    """Ids with gaps (pruned rows), times in id order (several rows may share a second)."""
    rows, id_, at = [], 0, START
    for gap, step in zip(gaps, steps, strict=False):
        id_ += gap
        at += timedelta(seconds=step)
        rows.append((id_, at))
    write_log(rows)
    for offset in probes:
        moment = START + timedelta(seconds=offset)
        first = first_id_from(db.session, Scan.id, Scan.at, moment)
        assert splits(rows, moment, first), (moment, first)
    db.session.rollback()
