"""The daily dispatch summary by mail: a text body with the report attached, sent by SMTP."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from . import floor, timeline
from .exporting import MEDIA_TYPES


class MailError(Exception):
    """The mail was not sent; the message says why in one line."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    user: str | None
    password: str | None
    starttls: bool
    timeout_s: float
    sender: str

    @classmethod
    def from_config(cls, config) -> SmtpSettings:
        """The ``BAGTRACK_SMTP_*`` and ``BAGTRACK_MAIL_FROM`` settings; :class:`MailError` when mail is not set up."""
        missing = [name for name in ("BAGTRACK_SMTP_HOST", "BAGTRACK_MAIL_FROM") if not config.get(name)]
        if missing:
            raise MailError(f"mail is not configured: set {' and '.join(missing)}")
        return cls(
            host=config["BAGTRACK_SMTP_HOST"],
            port=config["BAGTRACK_SMTP_PORT"],
            user=config["BAGTRACK_SMTP_USER"],
            password=config["BAGTRACK_SMTP_PASSWORD"],
            starttls=config["BAGTRACK_SMTP_STARTTLS"],
            timeout_s=config["BAGTRACK_SMTP_TIMEOUT_S"],
            sender=config["BAGTRACK_MAIL_FROM"],
        )


def mail_address(raw: str) -> str:
    """One plain address (``name@host``); :class:`MailError` for anything else."""
    _name, address = parseaddr(raw)
    local, at, host = address.rpartition("@")
    if not (at and local and "." in host) or address != raw.strip() or any(c.isspace() for c in address):
        raise MailError(f"{raw[:80]!r} is not a mail address (name@host)")
    return address


COLUMNS = ("Bill", "Closed", "Parents", "Children", "Weight (kg)", "Destination", "Vehicle", "Closed by")


def daily_summary_text(report: dict) -> str:
    """The daily dispatch summary as plain text: totals first, then one line per bill."""
    day, totals = report["day"], report["totals"]
    lines = [
        f"Dispatch summary for {day.isoformat()} ({timeline.zone().key})",
        "",
        f"{totals['bills']:,} bills closed: {totals['parents']:,} parents, {totals['children']:,} children,"
        f" {totals['weight_kg']:,} kg.",
    ]
    if report["bills"]:
        rows = [
            (
                bill["bill_no"],
                f"{timeline.local(bill['closed_at']):%H:%M}",
                f"{bill['parents']:,}",
                f"{bill['children']:,}",
                f"{bill['weight_kg']:,}",
                bill["destination"] or "",
                bill["vehicle"] or "",
                bill["closed_by"] or "",
            )
            for bill in report["bills"]
        ]
        widths = [max(len(row[column]) for row in [COLUMNS, *rows]) for column in range(len(COLUMNS))]
        lines.append("")
        lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [COLUMNS, *rows])  # fmt: skip
    return "\n".join(lines) + "\n"


def daily_summary_message(report: dict, *, sender: str, recipients: list[str], fmt: str) -> EmailMessage:
    """The mail of one day's summary, the report attached as ``daily-DAY.csv`` or ``.xlsx``."""
    day = report["day"].isoformat()
    message = EmailMessage()
    message["Subject"] = f"Dispatch summary {day}: {report['totals']['bills']:,} bills"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content(daily_summary_text(report))
    maintype, subtype = MEDIA_TYPES[fmt].split(";")[0].split("/")
    message.add_attachment(
        floor.report_file("daily", fmt, report), maintype=maintype, subtype=subtype, filename=f"daily-{day}.{fmt}"
    )
    return message


def send(message: EmailMessage, settings: SmtpSettings) -> None:
    """Hand ``message`` to the SMTP server (STARTTLS and login when set); :class:`MailError` when it fails."""
    where = f"{settings.host}:{settings.port}"
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password or "")
            smtp.send_message(message)
    except smtplib.SMTPException as exc:
        raise MailError(f"the mail server {where} did not accept the mail: {_one_line(exc)}") from None
    except OSError as exc:
        raise MailError(f"could not reach the mail server {where}: {exc.strerror or _one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
