"""The ``flask --app bagtrack`` command groups."""

from flask import Flask


def register(app: Flask) -> None:
    from . import users

    for group in users.GROUPS:
        app.cli.add_command(group)
