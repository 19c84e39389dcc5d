"""The ``flask --app bagtrack`` command groups."""

from flask import Flask


def register(app: Flask) -> None:
    from . import prune, report, seed, site, transfer, users

    for group in (*users.GROUPS, transfer.import_group, report.report_group):
        app.cli.add_command(group)
    for command in (site.bootstrap, site.check, seed.seed, transfer.export, prune.prune):
        app.cli.add_command(command)
