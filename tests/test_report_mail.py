"""``flask report daily``: the daily dispatch summary printed, or mailed through a real SMTP server."""

from __future__ import annotations

import csv
import io
import socket
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from bagtrack import billing, timeline
from bagtrack.extensions import db
from bagtrack.models import User


class Mailbox:
    """An SMTP handler that keeps every mail it is given; it knows no one at ``nowhere.example``."""

    def __init__(self):
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, _server, _session, envelope, address, _options):
        if address.endswith("@nowhere.example"):
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server, _session, envelope):
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server():
    """A local SMTP server (no TLS) that accepts the login ``reports`` / ``mail-secret`` and nothing else."""
    logins = []

    def authenticate(_server, _session, _envelope, _mechanism, auth_data):
        logins.append(auth_data.login)
        return AuthResult(success=auth_data.login == b"reports" and auth_data.password == b"mail-secret")

    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield controller, mailbox, logins
    finally:
        controller.stop()


@pytest.fixture
def closed_bill(make_parent, make_bill):
    office = make_parent("SB00001", children=3) and db.session.query(User).filter_by(username="factory").one()
    make_bill("B-7", capacity=2, destination="Pune", vehicle_no="MH12 AB 1234")
    billing.load_parent(db.session, office, "B-7", "SB00001", confirmed=True)
    billing.close_bill(db.session, office, "B-7")
    db.session.commit()


def mail_settings(app, controller, **overrides) -> None:
    settings = {
        "BAGTRACK_SMTP_HOST": controller.hostname,
        "BAGTRACK_SMTP_PORT": controller.port,
        "BAGTRACK_SMTP_USER": "reports",
        "BAGTRACK_SMTP_PASSWORD": "mail-secret",
        "BAGTRACK_SMTP_STARTTLS": False,
        "BAGTRACK_MAIL_FROM": "bagtrack@example.com",
    }
    app.config.update({**settings, **overrides})


def test_daily_summary_is_mailed_with_the_report_attached(app, runner, closed_bill, smtp_server):
    controller, mailbox, logins = smtp_server
    mail_settings(app, controller)
    today = timeline.today().isoformat()

    result = runner.invoke(
        args=["report", "daily", "--day", today, "--mail-to", "boss@example.com", "--mail-to", "desk@example.com"]
    )

    assert result.exit_code == 0, result.output
    assert result.output == (
        f"Sent the dispatch summary of {today} (1 bills) to boss@example.com, desk@example.com"
        f" through 127.0.0.1:{controller.port}.\n"
    )
    assert logins == [b"reports"]
    ((sender, recipients, raw),) = mailbox.mails
    assert (sender, recipients) == ("bagtrack@example.com", ["boss@example.com", "desk@example.com"])
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["Subject"] == f"Dispatch summary {today}: 1 bills"
    body = mail.get_body(("plain",)).get_content()
    assert "1 bills closed: 1 parents, 3 children, 3.0 kg." in body
    assert "B-7" in body and "Pune" in body and "MH12 AB 1234" in body and "factory" in body
    (attachment,) = mail.iter_attachments()
    assert attachment.get_filename() == f"daily-{today}.csv"
    rows = list(csv.reader(io.StringIO(attachment.get_content())))
    assert rows[0][0] == "bill_no" and rows[1][0] == "B-7" and len(rows) == 2


def test_daily_summary_can_attach_xlsx_and_prints_without_mail(app, runner, closed_bill, smtp_server):
    controller, mailbox, _logins = smtp_server
    mail_settings(app, controller)

    mailed = runner.invoke(args=["report", "daily", "--mail-to", "boss@example.com", "--format", "xlsx"])
    printed = runner.invoke(args=["report", "daily"])

    assert mailed.exit_code == 0, mailed.output
    (attachment,) = message_from_bytes(mailbox.mails[0][2], policy=policy.default).iter_attachments()
    assert attachment.get_filename().endswith(".xlsx") and attachment.get_content()[:2] == b"PK"
    assert printed.exit_code == 0, printed.output
    assert printed.output.startswith(f"Dispatch summary for {timeline.today().isoformat()} (UTC)\n")
    assert "B-7" in printed.output and len(mailbox.mails) == 1


def test_mail_without_settings_is_a_clear_error(app, runner, closed_bill):
    app.config.update(BAGTRACK_SMTP_HOST=None, BAGTRACK_MAIL_FROM=None)

    result = runner.invoke(args=["report", "daily", "--mail-to", "boss@example.com"])

    assert result.exit_code == 1
    assert result.output == "Error: mail is not configured: set BAGTRACK_SMTP_HOST and BAGTRACK_MAIL_FROM\n"


def test_unreachable_or_refusing_mail_server_is_a_clear_error(app, runner, closed_bill, smtp_server):
    controller, mailbox, _logins = smtp_server
    nobody = free_port()
    mail_settings(app, controller, BAGTRACK_SMTP_PORT=nobody)

    unreachable = runner.invoke(args=["report", "daily", "--mail-to", "boss@example.com"])
    mail_settings(app, controller)
    refused = runner.invoke(args=["report", "daily", "--mail-to", "boss@nowhere.example"])
    mail_settings(app, controller, BAGTRACK_SMTP_STARTTLS=True)
    without_tls = runner.invoke(args=["report", "daily", "--mail-to", "boss@example.com"])

    assert unreachable.exit_code == 1
    assert unreachable.output.startswith(f"Error: could not reach the mail server 127.0.0.1:{nobody}: ")
    for result in (refused, without_tls):
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: the mail server 127.0.0.1:{controller.port} did not accept the mail")
        assert "Traceback" not in result.output
    assert "550" in refused.output and "STARTTLS" in without_tls.output
    assert mailbox.mails == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--mail-to", "not-an-address"], "Error: 'not-an-address' is not a mail address (name@host)\n"),
        (["--mail-to", "boss@example.com\nBcc: x@y.z"], "is not a mail address"),
        (["--day", "2026-13-01"], "Error: 'day' must be a date written YYYY-MM-DD, not '2026-13-01'.\n"),
    ],
)
def test_bad_arguments_are_clear_errors(app, runner, smtp_server, args, error):
    mail_settings(app, smtp_server[0])

    result = runner.invoke(args=["report", "daily", *args])

    assert result.exit_code == 1
    assert error in result.output
    assert smtp_server[1].mails == []
