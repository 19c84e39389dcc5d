"""The admin pages over HTTP: users, dispatch areas and the audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import JSON, PASSWORD, post_login, user_row
from sqlalchemy import select

from bagtrack.extensions import db
from bagtrack.models import AuditEntry, DispatchArea, User, utcnow


@pytest.fixture
def admin(make_user, login_as):
    return login_as(make_user("boss", role="admin", area=None))


def audit_actions(target: str) -> list[str]:
    statement = select(AuditEntry.action).where(AuditEntry.target == target).order_by(AuditEntry.id)
    return list(db.session.scalars(statement))


def changed(user: User, **fields) -> User:
    for name, value in fields.items():
        setattr(user, name, value)
    db.session.commit()
    return user


ADMIN_ROUTES = [
    ("GET", "/admin/"),
    ("GET", "/admin/audit"),
    ("POST", "/admin/users"),
    ("POST", "/admin/users/worker/role"),
    ("POST", "/admin/users/worker/area"),
    ("POST", "/admin/users/worker/disable"),
    ("POST", "/admin/users/worker/enable"),
    ("POST", "/admin/users/worker/unlock"),
    ("POST", "/admin/users/worker/reset-password"),
    ("POST", "/admin/areas"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("role", ["biller", "dispatcher"])
def test_only_admins_reach_the_admin_pages(make_user, login_as, role, method, path):
    make_user("worker", role="dispatcher", area="NORTH")
    client = login_as(make_user("someone", role=role, area="NORTH"))
    form = {"username": "intruder", "role": "admin", "area": "NORTH", "code": "EVIL"}
    response = client.open(path, method=method, data=form if method == "POST" else None, headers=JSON)
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert client.open(path, method=method, data=form if method == "POST" else None).status_code == 403
    worker = user_row("worker")
    assert (worker.role, worker.active) == ("dispatcher", True)
    assert user_row("intruder") is None
    assert db.session.scalar(select(DispatchArea).where(DispatchArea.code == "EVIL")) is None
    assert db.session.scalar(select(AuditEntry)) is None


def test_admin_page_lists_users_with_their_state(admin, make_user):
    make_user("worker", role="dispatcher", area="NORTH")
    changed(make_user("gone", role="biller", area=None), active=False)
    changed(make_user("guesser", role="biller", area=None), locked_until=utcnow() + timedelta(minutes=10))
    html = admin.get("/admin/").get_data(as_text=True)
    assert "worker" in html and "gone" in html and "guesser" in html
    assert 'status-disabled">disabled' in html
    assert "locked until" in html
    assert 'status-active">active' in html
    assert "/admin/users/guesser/unlock" in html
    assert "/admin/users/gone/enable" in html
    assert "/admin/users/worker/disable" in html
    assert "/admin/audit" in html
    assert "<td>NORTH</td>" in html


def test_create_user_with_a_password(admin, client, make_area):
    make_area("NORTH")
    response = admin.post(
        "/admin/users", data={"username": "Ana", "role": "dispatcher", "area": "north", "password": "long-enough-1"}
    )
    assert response.status_code == 303
    assert "Created dispatcher ana." in admin.get("/admin/").get_data(as_text=True)
    ana = user_row("ana")
    assert (ana.role, ana.area.code) == ("dispatcher", "NORTH")
    assert "long-enough-1" not in ana.password_hash
    assert post_login(client, "ana", "long-enough-1").status_code == 303
    assert audit_actions("ana") == ["user.create"]


def test_create_user_without_a_password_shows_a_generated_one_once(admin, client):
    response = admin.post("/admin/users", data={"username": "bob", "role": "biller"})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    password = html.split('<code class="password">')[1].split("</code>")[0]
    assert len(password) >= 12
    assert password not in user_row("bob").password_hash
    assert password not in admin.get("/admin/").get_data(as_text=True)
    assert password not in (db.session.scalar(select(AuditEntry.after).where(AuditEntry.target == "bob")) or "")
    assert post_login(client, "bob", password).status_code == 303


def test_create_user_as_json_returns_the_generated_password(admin, client):
    response = admin.post("/admin/users", data={"username": "carl", "role": "admin"}, headers=JSON)
    assert response.status_code == 201
    body = response.get_json()
    assert body["ok"] is True
    assert body["user"] == {"username": "carl", "role": "admin", "area": None, "active": True, "locked_until": None}
    assert post_login(client, "carl", body["password"]).status_code == 303
    chosen = admin.post(
        "/admin/users", data={"username": "dora", "role": "biller", "password": "chosen-pass"}, headers=JSON
    )
    assert chosen.get_json()["password"] is None


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"username": "eve", "role": "dispatcher"}, "A dispatcher needs a dispatch area"),
        ({"username": "eve", "role": "boss"}, "Role must be one of"),
        ({"username": "Eve Smith", "role": "biller"}, "A username is 1 to 64"),
        ({"username": "eve", "role": "biller", "password": "short"}, "at least 10 characters"),
        ({"username": "eve", "role": "biller", "area": "MOON"}, "There is no dispatch area"),
        ({"username": "boss", "role": "biller"}, "User boss already exists."),
    ],
)
def test_refused_user_creation_re_renders_the_page(admin, form, message):
    response = admin.post("/admin/users", data=form)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert 'data-error="invalid_input"' in html
    assert f'value="{form["username"]}"' in html
    json = admin.post("/admin/users", data=form, headers=JSON).get_json()
    assert json["ok"] is False and json["error"] == "invalid_input" and message in json["message"]
    assert user_row("eve") is None


def test_set_role_and_area(admin, make_user, make_area):
    make_user("worker", role="dispatcher", area="NORTH")
    make_area("SOUTH")
    response = admin.post("/admin/users/worker/area", data={"area": "SOUTH"})
    assert response.status_code == 303
    assert "worker now works in SOUTH." in admin.get("/admin/").get_data(as_text=True)
    assert user_row("worker").area.code == "SOUTH"
    body = admin.post("/admin/users/worker/role", data={"role": "biller"}, headers=JSON).get_json()
    assert body["user"] == {
        "username": "worker",
        "role": "biller",
        "area": "SOUTH",
        "active": True,
        "locked_until": None,
    }
    assert audit_actions("worker") == ["user.set_area", "user.set_role"]


def test_a_role_or_area_change_ends_the_users_sessions(admin, make_user, login_as):
    worker = login_as(make_user("worker", role="biller", area=None))
    assert worker.get("/bills").status_code == 200
    admin.post("/admin/users/worker/role", data={"role": "admin"})
    assert worker.get("/bills", headers=JSON).status_code == 401


def test_refused_user_changes(admin, make_user):
    make_user("office", role="biller", area=None)
    response = admin.post("/admin/users/office/role", data={"role": "dispatcher"})
    assert response.status_code == 400
    assert "Give office an area" in response.get_data(as_text=True)
    assert user_row("office").role == "biller"
    body = admin.post("/admin/users/office/area", data={"area": "MOON"}, headers=JSON).get_json()
    assert body["error"] == "invalid_input" and "MOON" in body["message"]
    response = admin.post("/admin/users/nobody/disable", headers=JSON)
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    assert admin.post("/admin/users/nobody/disable").status_code == 404


def test_disabling_a_user_ends_their_existing_session(admin, make_user, login_as):
    office = login_as(make_user("office", role="biller", area=None))
    assert office.get("/bills").status_code == 200
    response = admin.post("/admin/users/office/disable")
    assert response.status_code == 303
    assert "office is disabled" in admin.get("/admin/").get_data(as_text=True)
    assert user_row("office").active is False
    gone = office.get("/bills")
    assert gone.status_code == 302 and "/login" in gone.headers["Location"]
    assert office.get("/bills", headers=JSON).status_code == 401
    assert post_login(office, "office", PASSWORD).status_code == 401

    assert admin.post("/admin/users/office/enable", headers=JSON).get_json()["user"]["active"] is True
    assert post_login(office, "office", PASSWORD).status_code == 303
    assert audit_actions("office") == ["user.disable", "user.enable"]


def test_unlocking_a_locked_user(admin, make_user, client):
    guesser = make_user("guesser", role="biller", area=None)
    changed(guesser, failed_logins=5, locked_until=utcnow() + timedelta(minutes=15))
    assert post_login(client, "guesser", PASSWORD).status_code == 401
    response = admin.post("/admin/users/guesser/unlock")
    assert response.status_code == 303
    assert "guesser is unlocked." in admin.get("/admin/").get_data(as_text=True)
    guesser = user_row("guesser")
    assert (guesser.locked_until, guesser.failed_logins) == (None, 0)
    assert post_login(client, "guesser", PASSWORD).status_code == 303
    assert audit_actions("guesser") == ["user.unlock"]


def test_reset_password_shows_a_new_one_once_and_ends_sessions(admin, make_user, login_as, client):
    office = login_as(make_user("office", role="biller", area=None))
    response = admin.post("/admin/users/office/reset-password")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    password = html.split('<code class="password">')[1].split("</code>")[0]
    assert password not in admin.get("/admin/").get_data(as_text=True)
    assert office.get("/bills", headers=JSON).status_code == 401
    assert post_login(client, "office", PASSWORD).status_code == 401
    assert post_login(client, "office", password).status_code == 303
    body = admin.post("/admin/users/office/reset-password", headers=JSON).get_json()
    assert body["ok"] is True and body["password"] != password
    assert audit_actions("office") == ["user.reset_password", "user.reset_password"]
    assert password not in "".join(
        filter(None, db.session.scalars(select(AuditEntry.after).where(AuditEntry.target == "office")))
    )


def test_add_dispatch_area(admin):
    response = admin.post("/admin/areas", data={"code": "east-2", "name": "East dock"})
    assert response.status_code == 303
    html = admin.get("/admin/").get_data(as_text=True)
    assert "Added dispatch area EAST-2." in html
    assert "<td>EAST-2</td><td>East dock</td>" in html
    assert admin.post("/admin/areas", data={"code": "WEST"}, headers=JSON).status_code == 201
    assert audit_actions("EAST-2") == ["area.add"]


@pytest.mark.parametrize(
    ("code", "message"),
    [("", "An area code is 1 to 20"), ("BAD CODE", "An area code is 1 to 20"), ("NORTH", "already exists")],
)
def test_refused_areas_re_render_the_page(admin, make_area, code, message):
    make_area("NORTH")
    response = admin.post("/admin/areas", data={"code": code, "name": "Somewhere"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html and 'value="Somewhere"' in html
    assert admin.post("/admin/areas", data={"code": code}, headers=JSON).get_json()["error"] == "invalid_input"


def test_audit_log_is_newest_first_in_pages(app, admin, make_user, make_bill):
    make_user("worker", role="dispatcher", area="NORTH")
    admin.post("/admin/users/worker/disable")
    admin.post("/admin/users/worker/enable")
    admin.post("/admin/areas", data={"code": "EAST"})
    make_bill("B-1")
    app.config["BAGTRACK_PAGE_SIZE"] = 3

    first = admin.get("/admin/audit").get_data(as_text=True)
    assert first.index("bill.create") < first.index("area.add") < first.index("user.enable")
    assert "user.disable" not in first
    assert "<td>boss</td>" in first and "<td>factory</td>" in first
    assert '"active": false' in first.replace("&#34;", '"')
    older = first.split('class="pager"')[1].split('href="')[1].split('"')[0]
    second = admin.get(older).get_data(as_text=True)
    assert "user.disable" in second and "bill.create" not in second
    assert 'class="pager"' not in second
    assert admin.get("/admin/audit?before=x").status_code == 400
