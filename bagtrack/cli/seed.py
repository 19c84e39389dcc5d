"""``flask seed``: demo and benchmark data."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .. import seeding
from ..errors import Refusal
from ..extensions import db
from .site import UPGRADE_HINT, first_line
from .users import fail


@click.command("seed")
@click.option("--parents", type=int, required=True, help="Parent bags to add (each up to 30 children).")
@click.option("--areas", type=int, default=4, show_default=True, help="Dispatch areas A1..AK to use.")
@click.option("--bills", type=int, default=None, help="Bills to load parents on (default: one per 250).")
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="Random seed.")
@with_appcontext
def seed(parents: int, areas: int, bills: int | None, seed_value: int) -> None:
    """Add demo data: parents full of children, bills, scans, and users per role."""
    started = time.perf_counter()
    with ExitStack() as stack:

        def progress(total: int):
            bar = stack.enter_context(click.progressbar(length=total, label="Writing rows", file=sys.stdout))
            return bar.update

        try:
            report = seeding.seed(
                db.session, parents=parents, areas=areas, bills=bills, seed_value=seed_value, progress=progress
            )
        except Refusal as refusal:
            fail(refusal.message)
        except SQLAlchemyError as exc:
            fail(f"the database refused the seed ({first_line(exc)}); if it is not migrated, {UPGRADE_HINT}")
    elapsed = time.perf_counter() - started
    bags = report.parents + report.children
    click.echo(
        f"Seeded {report.parents} parents and {report.children} children ({bags} bags), {report.bills} bills"
        f" and {report.scans} scans in areas {', '.join(report.areas)} in {elapsed:.1f} s."
    )
    for user in report.users:
        where = f" in {user.area}" if user.area else ""
        password = f"password {report.password}" if user.created else "existed, password unchanged"
        click.echo(f"  {user.role}{where}: {user.username}  ({password})")
    if any(user.created for user in report.users):
        click.echo("The password is shown once.")
