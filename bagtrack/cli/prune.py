"""``flask prune``: deleting old scan-log rows."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .. import pruning
from ..errors import Refusal
from ..extensions import db
from .site import UPGRADE_HINT, first_line
from .users import fail


@click.command("prune")
@click.option(
    "--older-than", "days", type=int, required=True, metavar="DAYS", help="Delete scans older than DAYS days (>= 1)."
)
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted and folded.")
@with_appcontext
def prune(days: int, dry_run: bool) -> None:
    """Delete scan-log rows older than DAYS days, in short batches, keeping the dashboard exact.

    The latest scan that put each packed child into its parent is kept
    however old. Dashboard tally rows of the days before yesterday are
    folded into one row per area; the figures do not change, except the scan
    total, which follows the rows deleted.
    """
    try:
        report = pruning.prune(db.session, older_than_days=days, dry_run=dry_run)
    except Refusal as refusal:
        fail(refusal.message)
    except SQLAlchemyError as exc:
        fail(f"the database refused the prune ({first_line(exc)}); if it is not migrated, {UPGRADE_HINT}")
    cutoff = report.cutoff.isoformat(sep=" ", timespec="seconds")
    if dry_run:
        click.echo(
            f"Dry run: would delete {report.deleted} scan rows made before {cutoff} UTC, keep {report.kept} that"
            f" record how packed children got into their parents, and fold {report.folded} tally rows."
        )
        return
    click.echo(
        f"Deleted {report.deleted} scan rows made before {cutoff} UTC; kept {report.kept} that record how packed"
        f" children got into their parents; folded {report.folded} tally rows of past days."
    )
