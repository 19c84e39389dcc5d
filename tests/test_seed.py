"""``flask seed``: demo data that adds to a site and passes every invariant."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select, text

from bagtrack import seeding, stats
from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import Bag, Bill, Scan, User

CREDENTIAL = re.compile(r"^  (\w+)(?: in (\w+))?: (\S+)  \(password (\S+)\)$", re.MULTILINE)


def count(model, *conditions) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*conditions))


def test_seed_writes_consistent_data_with_counts_the_dashboard_shows(runner):
    result = runner.invoke(args=["seed", "--parents", "40", "--areas", "3", "--bills", "4", "--seed", "7"])

    assert result.exit_code == 0, result.output
    db.session.rollback()
    assert find_violations(db.session) == []
    parents = count(Bag, Bag.kind == "parent")
    children = count(Bag, Bag.kind == "child")
    figures = stats.tally_figures(db.session, None)
    assert figures["bags"] == {"parents": 40, "children": children}
    assert parents == 40 and children > 30 * 30
    assert figures["parents"]["complete"] == count(Bag, Bag.kind == "parent", Bag.status == "complete") > 30
    assert 0 < figures["parents"]["open"] < 40
    assert figures["bills"]["open"] + figures["bills"]["closed"] == 4 == count(Bill)
    assert figures["bills"]["closed"] >= 3
    assert figures["scans"]["total"] == count(Scan, Scan.outcome == "ok")
    assert count(Scan) >= 1.25 * (parents + children)
    assert count(Scan, Scan.outcome == "rejected", Scan.reason.is_not(None)) > 0
    assert f"Seeded 40 parents and {children} children ({40 + children} bags), 4 bills" in result.output


def test_seed_codes_follow_the_patterns_and_counts_match_the_scan_log(runner, app):
    runner.invoke(args=["seed", "--parents", "12"])
    db.session.rollback()

    qrs = db.session.execute(select(Bag.kind, Bag.qr)).all()
    parent_pattern = app.config["BAGTRACK_PARENT_QR"]
    child_pattern = app.config["BAGTRACK_CHILD_QR"]
    assert all(parent_pattern.fullmatch(qr) for kind, qr in qrs if kind == "parent")
    assert all(child_pattern.fullmatch(qr) and not parent_pattern.fullmatch(qr) for kind, qr in qrs if kind == "child")
    assert count(Scan, Scan.kind == "parent", Scan.outcome == "ok") == 12
    assert count(Scan, Scan.kind == "load") == count(Bag, Bag.bill_id.is_not(None))
    assert count(Scan, Scan.kind == "child", Scan.outcome == "ok", Scan.reason.is_(None)) == count(
        Bag, Bag.kind == "child"
    )
    unlinked = db.session.scalar(text("SELECT count(*) FROM bag WHERE kind = 'child' AND linked_by_id IS NULL"))
    assert unlinked == 0


def test_seed_prints_credentials_that_log_in(runner, client):
    result = runner.invoke(args=["seed", "--parents", "3", "--areas", "2"])

    credentials = CREDENTIAL.findall(result.output)
    assert [(role, area, username) for role, area, username, _ in credentials] == [
        ("admin", "", "demo-admin"),
        ("biller", "", "demo-biller"),
        ("dispatcher", "A1", "demo-a1"),
        ("dispatcher", "A2", "demo-a2"),
    ]
    password = credentials[0][3]
    client.fetch_csrf_token()
    response = client.post("/login", data={"username": "demo-a2", "password": password})
    assert response.status_code == 303


def test_seed_adds_to_an_existing_site(runner, make_parent, make_user):
    make_parent("SB00005", children=2)
    first = runner.invoke(args=["seed", "--parents", "10"])
    second = runner.invoke(args=["seed", "--parents", "10", "--seed", "2"])

    assert (first.exit_code, second.exit_code) == (0, 0), second.output
    assert "(existed, password unchanged)" in second.output
    db.session.rollback()
    assert find_violations(db.session) == []
    parent_qrs = db.session.scalars(select(Bag.qr).where(Bag.kind == "parent").order_by(Bag.id)).all()
    assert parent_qrs == ["SB00005"] + [f"SB{number:05d}" for number in range(6, 26)]
    assert count(User, User.username.like("demo-%")) == 6


def test_seed_refuses_to_overflow_the_default_parent_pattern(runner, make_parent):
    make_parent("SB99990")

    result = runner.invoke(args=["seed", "--parents", "20"])

    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: 20 new parents need codes SB99991..SB100010")
    assert "set e.g. BAGTRACK_PARENT_QR='^SB\\d{5,7}$'" in result.output
    db.session.rollback()
    assert count(Bag) == 1
    assert count(User, User.username.like("demo-%")) == 0


def test_seed_widens_codes_when_the_pattern_allows(app, make_app, make_parent):
    make_parent("SB99990")
    db.session.commit()
    wide = make_app(BAGTRACK_PARENT_QR=re.compile(r"^SB\d{5,7}$", re.ASCII))

    with wide.app_context():
        seeding.seed(db.session, parents=20, areas=1)
        db.session.rollback()
        assert find_violations(db.session) == []
        newest = db.session.scalars(select(Bag.qr).where(Bag.kind == "parent").order_by(Bag.id)).all()
        db.session.remove()

    assert newest[1:3] == ["SB099991", "SB099992"] and newest[-1] == "SB100010"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--parents", "0"], "Error: --parents must be at least 1.\n"),
        (["--parents", "5", "--areas", "0"], "Error: --areas must be from 1 to 99.\n"),
        (["--parents", "2", "--bills", "40"], "Error: --bills 40 needs as many complete parents; this seed has 2.\n"),
    ],
)
def test_seed_refuses_bad_input(runner, args, reason):
    result = runner.invoke(args=["seed", *args])

    assert (result.exit_code, result.output) == (1, reason)


def test_seed_refusal_names_the_limit_without_writing(app):
    with pytest.raises(Refusal) as caught:
        seeding.seed(db.session, parents=-3)

    assert caught.value.code == "invalid_input"
    assert count(Bag) == 0
