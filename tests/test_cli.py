"""The admin CLI: areas, users, bootstrap and check, as an operator would run them."""

from __future__ import annotations

import re

import pytest
from helpers import post_login, user_row
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from bagtrack import signin
from bagtrack.extensions import db
from bagtrack.models import DispatchArea, User

GENERATED = re.compile(r"\(shown once\): (\S+)")
BOOTSTRAP = re.compile(r"^Created admin user 'admin' with password: (\S+) — shown once, change it\.$", re.MULTILINE)


def test_areas_add_and_list(runner):
    added = runner.invoke(args=["areas", "add", "north", "--name", "North dock"])
    runner.invoke(args=["areas", "add", "EAST"])
    listed = runner.invoke(args=["areas", "list"])

    assert added.exit_code == 0
    assert added.output == "Added area NORTH (North dock).\n"
    assert listed.output == "EAST\tEAST\nNORTH\tNorth dock\n"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("NORTH", "Error: Dispatch area NORTH already exists.\n"),
        ("two words", "Error: An area code is 1 to 20 characters of A-Z, 0-9, '_' and '-'.\n"),
    ],
)
def test_areas_add_refuses_bad_input(runner, make_area, code, reason):
    make_area("NORTH")

    result = runner.invoke(args=["areas", "add", code])

    assert result.exit_code == 1
    assert result.output == reason
    assert db.session.scalar(select(text("count(*)")).select_from(DispatchArea)) == 1


@pytest.mark.parametrize(("role", "area"), [("admin", None), ("biller", None), ("dispatcher", "NORTH")])
def test_users_create_each_role(runner, make_area, role, area):
    make_area("NORTH")
    args = ["users", "create", f"new-{role}", "--role", role, "--password", "long-enough-1"]
    result = runner.invoke(args=args + (["--area", area] if area else []))

    assert result.exit_code == 0, result.output
    assert result.output == f"Created {role} new-{role}.\n"
    user = user_row(f"new-{role}")
    assert (user.role, user.area.code if user.area else None) == (role, area)
    assert user.check_password("long-enough-1")


def test_users_create_dispatcher_needs_an_area(runner):
    result = runner.invoke(args=["users", "create", "ana", "--role", "dispatcher", "--password", "long-enough-1"])

    assert result.exit_code == 1
    assert result.output == "Error: A dispatcher needs a dispatch area. Give it with --area CODE.\n"
    assert user_row("ana") is None


def test_users_create_without_password_and_terminal_prints_a_generated_one_once(runner):
    result = runner.invoke(args=["users", "create", "bob", "--role", "biller"])

    assert result.exit_code == 0
    passwords = GENERATED.findall(result.output)
    assert len(passwords) == 1
    assert user_row("bob").check_password(passwords[0])


def test_users_list_shows_role_area_and_state(runner, make_user):
    make_user("worker", "dispatcher", "NORTH")
    make_user("office", "biller", None)
    runner.invoke(args=["users", "disable", "office"])

    result = runner.invoke(args=["users", "list"])

    assert result.output == (
        "username\trole\tarea\tstate\noffice\tbiller\t-\tdisabled\nworker\tdispatcher\tNORTH\tactive\n"
    )


def test_users_set_role_and_set_area(runner, make_user, make_area):
    make_user("worker", "dispatcher", "NORTH")
    make_area("SOUTH")

    promoted = runner.invoke(args=["users", "set-role", "worker", "biller"])
    moved = runner.invoke(args=["users", "set-area", "worker", "south"])
    unknown = runner.invoke(args=["users", "set-area", "worker", "WEST"])

    assert promoted.output == "worker is now biller.\n"
    assert moved.output == "worker now works in area SOUTH.\n"
    assert (unknown.exit_code, unknown.output) == (1, "Error: There is no dispatch area 'WEST'.\n")
    user = user_row("worker")
    assert (user.role, user.area.code) == ("biller", "SOUTH")


def test_users_set_role_refuses_unknown_user(runner):
    result = runner.invoke(args=["users", "set-role", "ghost", "admin"])

    assert (result.exit_code, result.output) == (1, "Error: There is no user 'ghost'.\n")


def test_users_disable_ends_logging_in(runner, make_user, client):
    make_user("worker", "dispatcher", "NORTH")

    result = runner.invoke(args=["users", "disable", "worker"])

    assert result.output == "worker is disabled.\n"
    assert user_row("worker").active is False
    refused = post_login(client, "worker", "secret-pass")
    assert refused.status_code == 401
    assert "This account is disabled." in refused.get_data(as_text=True)


def test_users_unlock_lifts_a_lockout(runner, make_user):
    make_user("worker", "dispatcher", "NORTH")
    for _ in range(5):
        with pytest.raises(signin.LoginRefused):
            signin.authenticate(db.session, "worker", "wrong-password")
    assert user_row("worker").is_locked()

    result = runner.invoke(args=["users", "unlock", "worker"])

    assert result.output == "worker is unlocked.\n"
    assert signin.authenticate(db.session, "worker", "secret-pass").username == "worker"


def test_users_reset_password_generates_one_or_takes_the_given_one(runner, make_user):
    make_user("worker", "dispatcher", "NORTH")

    generated = runner.invoke(args=["users", "reset-password", "worker"])
    password = GENERATED.findall(generated.output)[0]
    assert user_row("worker").check_password(password)

    chosen = runner.invoke(args=["users", "reset-password", "worker", "--password", "chosen-pass-1"])
    assert chosen.output == "Password of worker reset.\n"
    assert user_row("worker").check_password("chosen-pass-1")

    short = runner.invoke(args=["users", "reset-password", "worker", "--password", "short"])
    assert (short.exit_code, short.output) == (1, "Error: A password has at least 10 characters.\n")


def test_bootstrap_creates_the_admin_once_with_a_random_password(runner, client):
    first = runner.invoke(args=["bootstrap"])

    assert first.exit_code == 0
    assert "Created dispatch area MAIN.\n" in first.output
    password = BOOTSTRAP.search(first.output).group(1)
    assert len(password) >= 12
    assert post_login(client, "admin", password).status_code == 303

    second = runner.invoke(args=["bootstrap"])

    assert (second.exit_code, second.output) == (0, "Users exist already: no admin created.\n")
    assert db.session.scalar(select(text("count(*)")).select_from(User)) == 1


def test_bootstrap_passwords_differ_between_sites(runner):
    first = BOOTSTRAP.search(runner.invoke(args=["bootstrap"]).output).group(1)
    db.session.execute(text("DELETE FROM audit_log"))
    db.session.execute(text("DELETE FROM app_user"))
    db.session.commit()
    second = BOOTSTRAP.search(runner.invoke(args=["bootstrap"]).output).group(1)

    assert first != second


def test_check_passes_on_a_migrated_database(runner):
    result = runner.invoke(args=["check"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "OK    configuration",
        "OK    database",
        "OK    redis",
        "OK    migrations",
    ]
    assert re.search(r"database: \w+ answered in [\d.]+ ms", lines[1])


def test_check_fails_when_the_database_is_unreachable(make_app, database_url):
    url = make_url(database_url)
    if url.drivername.startswith("sqlite"):
        unreachable = "sqlite:////nonexistent-directory/bagtrack.sqlite3"
    else:
        unreachable = url.set(port=1).render_as_string(hide_password=False)
    broken = make_app(SQLALCHEMY_DATABASE_URI=unreachable)

    result = broken.test_cli_runner().invoke(args=["check"])

    assert result.exit_code == 1
    assert re.search(r"^FAIL  database: .+$", result.output, re.MULTILINE)
    assert "FAIL  migrations: database unreachable" in result.output
    assert "invariants" not in result.output


def test_check_invariants_passes_on_consistent_data(runner, make_parent):
    make_parent(children=3)

    result = runner.invoke(args=["check", "--invariants"])

    assert result.exit_code == 0, result.output
    assert re.search(r"^OK    invariants: all hold", result.output, re.MULTILINE)


def test_check_invariants_lists_violations_and_fails(runner, make_parent):
    parent = make_parent("SB00042", children=3)
    db.session.execute(text("UPDATE bag SET child_count = 1 WHERE id = :id"), {"id": parent.id})
    db.session.commit()

    result = runner.invoke(args=["check", "--invariants"])

    assert result.exit_code == 1
    assert "FAIL  invariants: 1 violation(s)\n      Parent SB00042 has child_count 1 but holds 3 children.\n" in (
        result.output
    )


def test_commands_on_an_unmigrated_database_say_to_upgrade(make_app, tmp_path):
    empty = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'empty.sqlite3'}", SQLALCHEMY_ENGINE_OPTIONS={})
    cli = empty.test_cli_runner()

    checked = cli.invoke(args=["check", "--invariants"])
    bootstrapped = cli.invoke(args=["bootstrap"])
    seeded = cli.invoke(args=["seed", "--parents", "2"])

    assert checked.exit_code == 1
    assert "FAIL  migrations: database not migrated; run: flask --app bagtrack db upgrade\n" in checked.output
    assert "FAIL  invariants: not checked, the database is unreachable or not migrated\n" in checked.output
    assert bootstrapped.exit_code == 1
    assert bootstrapped.output == (
        "Error: the database is not ready (no such table: dispatch_area); run: flask --app bagtrack db upgrade\n"
    )
    assert seeded.exit_code == 1
    assert seeded.output.startswith("Error: the database refused the seed (no such table: bag)")


def test_users_set_role_to_dispatcher_without_an_area_names_the_command_that_helps(runner, make_user):
    make_user("office", role="biller", area=None)

    result = runner.invoke(args=["users", "set-role", "office", "dispatcher"])

    assert result.exit_code == 1
    assert result.output == (
        "Error: Give office an area before making them a dispatcher. Set it with: users set-area office AREA_CODE\n"
    )
