"""The ``flask --app bagtrack`` command groups."""

from flask import Flask


def register(app: Flask) -> None:
    from . import seed, site, users

    for group in users.GROUPS:
        app.cli.add_command(group)
    for command in (site.bootstrap, site.check, seed.seed):
        app.cli.add_command(command)
