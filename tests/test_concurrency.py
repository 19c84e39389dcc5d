"""Many scanners and billers at once, on the real PostgreSQL.

Every thread works in its own app context, so it has its own session and
connection, like a request in its own worker. A barrier starts them
together. The only exceptions a thread may meet are refusals; afterwards the
kept counters must equal recounts.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import event, func, select
from test_scanning import counter_mismatches, figures_without_time, recount_figures

from bagtrack import billing, scanning, stats
from bagtrack.errors import Refusal
from bagtrack.extensions import db
from bagtrack.invariants import find_violations
from bagtrack.models import Bag, Bill, Scan, User

pytestmark = pytest.mark.postgres

THREAD_TIMEOUT_S = 30


def run_together(app, jobs: list[Callable[[], object]]) -> list:
    """Run each job in a thread of its own app context, all released at once.

    Returns, per job, its result, the Refusal it met, or the unexpected
    exception (which fails the test).
    """
    barrier = threading.Barrier(len(jobs))
    outcomes: list = [None] * len(jobs)
    # Deadlocks are retried inside the domain, so they are caught here, where the driver raises them.
    database_errors: list[str] = []

    def on_error(context) -> None:
        database_errors.append(f"{type(context.original_exception).__name__}: {context.original_exception}")

    with app.app_context():
        engine = db.engine
    event.listen(engine, "handle_error", on_error)

    def run(index: int, job) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=THREAD_TIMEOUT_S)
                outcomes[index] = job()
            except Refusal as refusal:
                outcomes[index] = refusal
            except BaseException as exc:
                outcomes[index] = exc
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(index, job)) for index, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    event.remove(engine, "handle_error", on_error)
    assert database_errors == []
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    unexpected = [
        outcome for outcome in outcomes if isinstance(outcome, BaseException) and not isinstance(outcome, Refusal)
    ]
    assert unexpected == [], f"threads met errors other than refusals: {unexpected!r}"
    return outcomes


def codes_of(outcomes: list) -> Counter:
    return Counter(outcome.code if isinstance(outcome, Refusal) else "ok" for outcome in outcomes)


def thread_user(user_id: int) -> User:
    """The user loaded in the thread's own session."""
    return db.session.get(User, user_id)


def assert_consistent() -> None:
    db.session.expire_all()
    assert counter_mismatches(db.session) == []
    assert figures_without_time(stats.tally_figures(db.session, None)) == recount_figures(db.session)
    # Every child is in at most one parent, and every packed child's parent exists.
    orphans = db.session.scalar(
        select(func.count())
        .select_from(Bag)
        .where(Bag.kind == "child", Bag.status == "packed", Bag.parent_id.is_(None))
    )
    assert orphans == 0
    assert find_violations(db.session) == []


@pytest.fixture
def big_app(make_app):
    """An app whose pool holds one connection per thread of these tests."""
    return make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 55, "max_overflow": 0, "pool_timeout": 20})


def test_fifty_scanners_on_one_parent_never_exceed_its_capacity(big_app, make_user, make_parent):
    operator = make_user("op1", "dispatcher", "NORTH")
    parent = make_parent("SB00001")

    def scan(child_qr: str):
        return lambda: scanning.scan_child(db.session, thread_user(operator.id), parent.qr, child_qr)

    outcomes = run_together(big_app, [scan(f"C{number:04d}") for number in range(50)])
    assert codes_of(outcomes) == Counter({"ok": 30, "parent_full": 20})
    db.session.expire_all()
    stored = db.session.get(Bag, parent.id)
    assert (stored.child_count, stored.status) == (30, "complete")
    assert db.session.scalar(select(func.count()).select_from(Bag).where(Bag.parent_id == parent.id)) == 30
    # Refused children were not created, and every scan is in the log.
    assert db.session.scalar(select(func.count()).select_from(Bag).where(Bag.kind == "child")) == 30
    assert db.session.scalar(select(func.count()).select_from(Scan).where(Scan.reason == "parent_full")) == 20
    assert_consistent()


def test_one_child_scanned_into_two_parents_lands_in_one(big_app, make_user, make_parent):
    operator = make_user("op1", "dispatcher", "NORTH")
    make_parent("SB00001")
    make_parent("SB00002")
    for _ in range(5):
        child_qr = f"C{random.randrange(10**8):08d}"
        outcomes = run_together(
            big_app,
            [
                lambda p=parent_qr, c=child_qr: scanning.scan_child(db.session, thread_user(operator.id), p, c)
                for parent_qr in ("SB00001", "SB00002")
            ],
        )
        assert codes_of(outcomes) == Counter({"ok": 1, "child_in_other_parent": 1})
        winner = next(outcome for outcome in outcomes if not isinstance(outcome, Refusal))
        loser = next(outcome for outcome in outcomes if isinstance(outcome, Refusal))
        assert loser.message == f"Child bag {child_qr} is already in parent bag {winner.parent.qr}."
    assert_consistent()


def test_two_operators_with_swapped_children_orders_do_not_deadlock(big_app, make_user, make_parent):
    first = make_user("op1", "dispatcher", "NORTH")
    second = make_user("op2", "dispatcher", "NORTH")
    make_parent("SB00001")
    make_parent("SB00002")
    children = [f"C{number:04d}" for number in range(40)]

    def fill(user_id: int, parent_qr: str, order: list[str]):
        def work():
            outcomes = []
            user = thread_user(user_id)
            for child_qr in order:
                try:
                    outcomes.append(scanning.scan_child(db.session, user, parent_qr, child_qr))
                except Refusal as refusal:
                    outcomes.append(refusal)
            return outcomes

        return work

    outcomes = run_together(
        big_app, [fill(first.id, "SB00001", children), fill(second.id, "SB00002", list(reversed(children)))]
    )
    flat = [outcome for per_thread in outcomes for outcome in per_thread]
    assert set(codes_of(flat)) <= {"ok", "child_in_other_parent", "parent_full"}
    parents_of = dict(db.session.execute(select(Bag.qr, Bag.parent_id).where(Bag.kind == "child")).all())
    assert sorted(parents_of) == children
    assert all(parent_id is not None for parent_id in parents_of.values())
    assert_consistent()


def test_many_billers_loading_one_bill_stop_at_its_capacity(big_app, biller, make_parent, make_bill):
    for number in range(20):
        make_parent(f"SB{number:05d}", children=1)
    make_bill("B-1", capacity=7)

    outcomes = run_together(
        big_app,
        [
            lambda qr=f"SB{number:05d}": billing.load_parent(
                db.session, thread_user(biller.id), "B-1", qr, confirmed=True
            )
            for number in range(20)
        ],
    )
    assert codes_of(outcomes) == Counter({"ok": 7, "bill_full": 13})
    db.session.expire_all()
    bill = db.session.scalars(select(Bill)).one()
    assert (bill.parent_count, bill.child_count) == (7, 7)
    assert_consistent()


def test_load_remove_close_and_reopen_at_once_keep_the_bill_consistent(big_app, biller, make_parent, make_bill):
    for number in range(12):
        make_parent(f"SB{number:05d}", children=number % 3 + 1)
    make_bill("B-1", capacity=8)
    for number in range(4):
        billing.load_parent(db.session, biller, "B-1", f"SB{number:05d}", confirmed=True)

    actions = {
        "load": lambda user, qr: billing.load_parent(db.session, user, "B-1", qr, confirmed=True),
        "remove": lambda user, qr: billing.remove_parent(db.session, user, "B-1", qr),
        "close": lambda user, qr: billing.close_bill(db.session, user, "B-1"),
        "reopen": lambda user, qr: billing.reopen_bill(db.session, user, "B-1"),
    }

    def worker(seed: int):
        def work():
            user = thread_user(biller.id)
            chooser = random.Random(seed)
            done = []
            for _ in range(15):
                qr = f"SB{chooser.randrange(12):05d}"
                action = chooser.choice(["load", "load", "remove", "close", "reopen"])
                try:
                    change = actions[action](user, qr)
                    done.append((action, qr, "duplicate" if change.duplicate else "changed"))
                except Refusal as refusal:
                    done.append((action, qr, refusal.code))
            return done

        return work

    done = [entry for per_thread in run_together(big_app, [worker(seed) for seed in range(8)]) for entry in per_thread]
    outcomes = Counter(outcome for _, _, outcome in done)
    assert set(outcomes) <= {"changed", "duplicate", "bill_full", "bill_closed", "parent_not_on_bill", "bill_empty"}
    changed = Counter(action for action, _, outcome in done if outcome == "changed")
    # Each kind of change went through, and a good share of all the work was accepted.
    assert set(changed) == set(actions), outcomes
    assert outcomes["changed"] >= len(done) // 5, outcomes
    assert outcomes["changed"] + outcomes["duplicate"] >= len(done) // 2, outcomes
    db.session.expire_all()
    bill = db.session.scalars(select(Bill)).one()
    # Close and reopen alternate: the bill is closed exactly when one more close than reopen went through.
    assert changed["close"] - changed["reopen"] == (1 if bill.status == "closed" else 0)
    # Each parent is on the bill exactly when it started there or was loaded once more than it was removed.
    on_bill = set(db.session.scalars(select(Bag.qr).where(Bag.bill_id == bill.id)))
    net = {f"SB{number:05d}": int(number < 4) for number in range(12)}
    for action, qr, outcome in done:
        if outcome == "changed":
            net[qr] += {"load": 1, "remove": -1}.get(action, 0)
    assert net == {qr: int(qr in on_bill) for qr in net}
    assert bill.parent_count == len(on_bill)
    assert_consistent()


def test_undo_and_scans_on_one_parent_at_once_stay_consistent(big_app, make_user, make_parent):
    operators = [make_user(f"op{number}", "dispatcher", "NORTH") for number in range(6)]
    make_parent("SB00001")

    def worker(user_id: int, seed: int):
        def work():
            user = thread_user(user_id)
            chooser = random.Random(seed)
            done = []
            for number in range(12):
                try:
                    if chooser.random() < 0.35:
                        done.append(("undo", scanning.undo_last(db.session, user, "SB00001").child.qr))
                    else:
                        scan = scanning.scan_child(db.session, user, "SB00001", f"C{user_id}X{number}")
                        done.append(("scan", scan.child.qr))
                except Refusal as refusal:
                    done.append((refusal.code, None))
            return done

        return work

    outcomes = run_together(big_app, [worker(operator.id, seed) for seed, operator in enumerate(operators)])
    done = [entry for per_thread in outcomes for entry in per_thread]
    counts = Counter(what for what, _ in done)
    assert set(counts) <= {"scan", "undo", "nothing_to_undo", "parent_full"}
    # Both kinds of work went through, and a good share of it.
    assert counts["scan"] >= len(done) // 3 and counts["undo"] >= len(done) // 10, counts
    db.session.expire_all()
    parent = db.session.scalars(select(Bag).where(Bag.qr == "SB00001")).one()
    # The parent holds exactly the children scanned in and not undone.
    scanned = {qr for what, qr in done if what == "scan"}
    undone = {qr for what, qr in done if what == "undo"}
    assert undone <= scanned and len(undone) == counts["undo"]
    linked = set(db.session.scalars(select(Bag.qr).where(Bag.parent_id == parent.id)))
    assert linked == scanned - undone
    assert parent.child_count == len(linked)
    assert parent.status == ("complete" if parent.child_count == parent.capacity else "open")
    assert_consistent()


def test_many_scanners_creating_one_parent_create_it_once(big_app, make_user, make_area):
    operators = [make_user(f"op{number}", "dispatcher", "NORTH") for number in range(10)]
    outcomes = run_together(
        big_app,
        [lambda u=operator.id: scanning.scan_parent(db.session, thread_user(u), "SB00001") for operator in operators],
    )
    assert sorted(outcome.created for outcome in outcomes) == [False] * 9 + [True]
    assert db.session.scalar(select(func.count()).select_from(Bag)) == 1
    assert_consistent()


def test_many_scanners_creating_different_parents_do_not_deadlock(big_app, make_user):
    operators = [make_user(f"op{number}", "dispatcher", "NORTH") for number in range(12)]

    def create(user_id: int, first: int):
        def work():
            user = thread_user(user_id)
            return [scanning.scan_parent(db.session, user, f"SB{number:05d}") for number in range(first, first + 4)]

        return work

    outcomes = run_together(big_app, [create(operator.id, index * 4) for index, operator in enumerate(operators)])
    assert all(scan.created for per_thread in outcomes for scan in per_thread)
    assert stats.tally_figures(db.session, None)["bags"]["parents"] == 48
    assert_consistent()
