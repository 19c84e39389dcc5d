"""``flask report daily``: the daily dispatch summary on the terminal or by mail."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .. import floor, mailing
from ..errors import Refusal
from ..extensions import db
from .site import UPGRADE_HINT, first_line
from .users import fail

report_group = click.Group("report", help="Supervisors' reports from the command line.")


@report_group.command("daily")
@click.option("--day", metavar="YYYY-MM-DD", help="The local day (default: today).")
@click.option("--mail-to", "recipients", multiple=True, metavar="ADDRESS", help="Mail it to ADDRESS (repeat for more).")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True,
    help="The attachment's format.",
)  # fmt: skip
@with_appcontext
def daily(day: str | None, recipients: tuple[str, ...], fmt: str) -> None:
    """The bills closed on one day with their totals, as on /reports/daily.

    Without --mail-to the summary is printed; with it, it is sent by SMTP
    (BAGTRACK_SMTP_* and BAGTRACK_MAIL_FROM) as a text mail with the report
    attached.
    """
    try:
        settings = mailing.SmtpSettings.from_config(current_app.config) if recipients else None
        addresses = [mailing.mail_address(raw) for raw in recipients]
        report = floor.daily_report(db.session, floor.parse_day(day))
    except Refusal as refusal:
        fail(refusal.message)
    except mailing.MailError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"the database could not be read ({first_line(exc)}); if it is not migrated, {UPGRADE_HINT}")
    finally:
        db.session.rollback()
    if settings is None:
        click.echo(mailing.daily_summary_text(report), nl=False)
        return
    message = mailing.daily_summary_message(report, sender=settings.sender, recipients=addresses, fmt=fmt)
    try:
        mailing.send(message, settings)
    except mailing.MailError as exc:
        fail(str(exc))
    click.echo(
        f"Sent the dispatch summary of {report['day'].isoformat()} ({report['totals']['bills']:,} bills)"
        f" to {', '.join(addresses)} through {settings.host}:{settings.port}."
    )
