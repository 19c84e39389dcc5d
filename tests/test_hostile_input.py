"""Hostile input on every form, query string, path and JSON endpoint: whatever arrives, the
answer is a 4xx with a clear message or a 2xx/3xx, never a 500; nothing is stored
unnormalised; nothing is rendered unescaped.

Property tests draw random unicode (control and format characters, NUL, RTL marks,
zero-width characters, lone surrogates sent as the bytes a broken client would send),
invalid UTF-8, enormous values, repeated fields, files in multipart bodies, missing
fields, SQL and HTML payloads, and path tricks. After every example the database is
checked for anything stored unnormalised.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes, unquote, urlsplit

import pytest
from helpers import JSON, PASSWORD, BagtrackClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bagtrack import billing
from bagtrack.accounts import AREA_CODE_PATTERN, USERNAME_PATTERN
from bagtrack.codes import BILL_NO_PATTERN, normalise_username
from bagtrack.errors import STATUS_BY_CODE
from bagtrack.extensions import db
from bagtrack.limits import UPLOAD_MARK
from bagtrack.models import Bag, Bill, DispatchArea, Scan, User

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(1)>'
PAYLOADS = [
    "' OR 1=1 --",
    "SB00001'; DROP TABLE bag; --",
    "x' UNION SELECT password_hash FROM app_user --",
    SCRIPT,
    IMAGE,
    "{{ 7 * 7 }}",
    "%s%s%s%n",
    "\x00",
    "SB10001\x00",
    "\u202eSB10001",
    "\u200bsb10001\u200d\r\n",
    "\ufeffB-1\t",
    "ＳＢ１２３４５",
    "ſb12345",
    "ﬁ-1",
    "ß" * 50,
    "İ" * 40,
    "\ud800",
    "SB1\udfff0001",
    "😀" * 20,
    "\u2028\u2029\u0085",
    "-1",
    "0",
    "1e9",
    "NaN",
    "99999999999999999999999",
    "¹",
    "٣",
    "",
    " ",
]
# Codes and names that exist (or could), to decorate with hostile characters; not the admin's own.
KNOWN = [
    "SB10001",
    "SB10002",
    "sb12345",
    "CHILD0001",
    "B-1",
    "b-2",
    "NORTH",
    "SOUTH",
    "floor",
    "biller",
    "admin",
]
DECORATIONS = ["", "\x00", "\r\n", "\t", "\u200b", "\u200f", "\u202e", "\ufeff", " ", "\x1b[31m", "\u00a0"]

any_character_text = st.text(st.characters(exclude_categories=()), max_size=80)
decorated_code = st.builds(
    lambda before, code, after: before + code + after,
    st.sampled_from(DECORATIONS),
    st.sampled_from(KNOWN),
    st.sampled_from(DECORATIONS),
)
enormous = st.builds(
    lambda word, count: word * count, st.sampled_from(["A", "SB", "é", "\x00", "<b>"]), st.integers(65, 20_000)
)
hostile_text = st.one_of(st.sampled_from(PAYLOADS), any_character_text, decorated_code, enormous)
# Values as they travel: text (UTF-8, lone surrogates as the bytes a broken client sends) or raw bytes.
hostile_value = st.one_of(hostile_text, hostile_text, st.binary(max_size=60))


@dataclass(frozen=True)
class Upload:
    """A file where a text field belongs."""

    content: bytes


field_value = st.one_of(
    hostile_value,
    hostile_value,
    st.lists(hostile_value, min_size=2, max_size=4),
    st.builds(Upload, st.binary(max_size=200)),
)

PATH_TRICKS = [
    "../",
    "..",
    "%2e%2e%2f",
    "..%2F",
    "%2F",
    "%00",
    "SB10001%00",
    "%E2%80%AE",
    "%ZZ",
    "%",
    "B-1%2F..%2F..%2Fetc%2Fpasswd",
    "sb10001",
    "SB10001%0D%0A",
    ";",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "x" * 5000,
    "%C0%AE%C0%AE%2F",
    "%FF%FE",
]
path_segment = st.one_of(
    st.sampled_from(PATH_TRICKS),
    hostile_text.map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")),
    decorated_code.map(lambda text: quote(text, safe="")),
)


def as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


def pairs_of(fields: dict) -> list[tuple[str, object]]:
    pairs = []
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            pairs.append((name, one))
    return pairs


def urlencoded(fields: dict) -> bytes:
    return "&".join(
        f"{name}={quote_from_bytes(as_bytes(value.content if isinstance(value, Upload) else value))}"
        for name, value in pairs_of(fields)
    ).encode()


def multipart(fields: dict, boundary: str) -> bytes:
    parts = []
    for name, value in pairs_of(fields):
        if isinstance(value, Upload):
            head = f'Content-Disposition: form-data; name="{name}"; filename="x.csv"\r\nContent-Type: text/csv'
            content = value.content
        else:
            head = f'Content-Disposition: form-data; name="{name}"'
            content = as_bytes(value)
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # may hold {a}, {b}: hostile path segments
    fields: tuple[str, ...]
    actors: tuple[str, ...] = ("biller",)


SCANNERS = ("dispatcher", "biller")
ENDPOINTS = [
    Endpoint("POST", "/login", ("username", "password", "next"), ("anonymous",)),
    Endpoint("GET", "/login", ("next",), ("anonymous",)),
    Endpoint("POST", "/login/code", ("code",), ("anonymous",)),
    Endpoint("POST", "/account/password", ("current", "new", "repeated"), ("dispatcher",)),
    Endpoint("POST", "/account/2fa", ("code",), ("biller",)),
    Endpoint("POST", "/scan/parent", ("qr", "area"), SCANNERS),
    Endpoint("POST", "/scan/child", ("parent", "qr", "switch"), SCANNERS),
    Endpoint("POST", "/scan/undo", ("parent",), SCANNERS),
    Endpoint("GET", "/scan", ("parent", "area"), SCANNERS),
    Endpoint("POST", "/bills", ("bill_no", "capacity", "destination", "vehicle_no", "description")),
    Endpoint("GET", "/bills", ("status", "before", "q", "from", "to")),
    Endpoint("POST", "/bills/{a}/edit", ("destination", "vehicle_no", "description", "capacity", "reason")),
    Endpoint("POST", "/bills/{a}/cancel", ("reason",)),
    Endpoint("GET", "/bills/{a}/print", ()),
    Endpoint("POST", "/bags/{a}/children/{b}/remove", ("reason",)),
    Endpoint("POST", "/bags/{a}/reopen", ("reason",)),
    Endpoint("POST", "/bags/{a}/delete", ("reason",), ("admin",)),
    Endpoint("GET", "/labels", ("start", "count")),
    Endpoint("GET", "/lookup", ("q",), SCANNERS),
    Endpoint("GET", "/bills/{a}", ()),
    Endpoint("POST", "/bills/{a}/parents", ("qr",)),
    Endpoint("POST", "/bills/{a}/parents/{b}/remove", ()),
    Endpoint("POST", "/bills/{a}/close", ()),
    Endpoint("POST", "/bills/{a}/reopen", ()),
    Endpoint("POST", "/bags/{a}/close", ()),
    Endpoint("GET", "/bags", ("kind", "status", "area", "bill", "q", "before"), SCANNERS),
    Endpoint("GET", "/bags/{a}", (), SCANNERS),
    Endpoint(
        "GET", "/api/scans", ("limit", "before", "user", "outcome", "reason", "kind", "area", "from", "to"), SCANNERS
    ),
    Endpoint("GET", "/api/bags/{a}", (), SCANNERS),
    Endpoint("GET", "/scans", ("before", "user", "outcome", "reason", "kind", "area", "from", "to"), SCANNERS),
    Endpoint("POST", "/admin/users", ("username", "role", "area", "password"), ("admin",)),
    Endpoint("POST", "/admin/users/{a}/role", ("role",), ("admin",)),
    Endpoint("POST", "/admin/users/{a}/area", ("area",), ("admin",)),
    Endpoint("POST", "/admin/users/{a}/unlock", (), ("admin",)),
    Endpoint("POST", "/admin/areas", ("code", "name"), ("admin",)),
    Endpoint("GET", "/admin/audit", ("before",), ("admin",)),
    Endpoint("POST", "/admin/import", ("kind", "file"), ("admin",)),
    Endpoint("GET", "/exports/", ("from", "to"), SCANNERS),
    Endpoint("GET", "/exports/bags.csv", ("from", "to"), SCANNERS),
    Endpoint("GET", "/exports/{a}", ("from", "to"), SCANNERS),
]
# Changing accounts at random would lock the admin out of the rest of the run: those
# routes are driven with hostile names of users that do not exist.
NAMED_USER_ROUTES = ("disable", "enable", "reset-password")
EXISTING_USERS = ("boss", "office", "floor", "south-floor", "factory")


@pytest.fixture
def shop(app, make_user, make_parent, make_bill):
    """A small floor and a logged-in client per actor."""
    make_user("floor", area="NORTH")
    south_floor = make_user("south-floor", area="SOUTH")
    make_user("office", role="biller", area=None)
    make_user("boss", role="admin", area=None)
    floor_user = db.session.scalar(select(User).where(User.username == "floor"))
    make_parent("SB10001", user=floor_user, children=2)
    loaded = make_parent("SB10002", children=1)
    make_parent("SB20001", area="SOUTH", user=south_floor, children=1)
    make_bill("B-1", capacity=5)
    billing.load_parent(db.session, floor_user, "B-1", loaded.qr, confirmed=True)
    make_bill("B-2", capacity=5)
    db.session.commit()
    clients = {"anonymous": fresh_client(app)}
    for actor, username in (("dispatcher", "floor"), ("biller", "office"), ("admin", "boss")):
        clients[actor] = fresh_client(app)
        response = clients[actor].post("/login", data={"username": username, "password": PASSWORD})
        assert response.status_code == 303
        clients[actor].fetch_csrf_token()
    db.session.commit()
    return clients


def fresh_client(app) -> BagtrackClient:
    app.test_client_class = BagtrackClient
    client = app.test_client()
    client.fetch_csrf_token()
    return client


def without_controls(text: str) -> bool:
    return not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def assert_stored_normalised(app) -> None:
    db.session.rollback()
    parent_pattern = re.compile(app.config["BAGTRACK_PARENT_QR"].pattern, re.ASCII)
    child_pattern = re.compile(app.config["BAGTRACK_CHILD_QR"].pattern, re.ASCII)
    for qr, kind in db.session.execute(select(Bag.qr, Bag.kind)):
        assert qr.isascii() and qr == qr.upper(), qr
        assert (parent_pattern if kind == "parent" else child_pattern).fullmatch(qr), (qr, kind)
    for bill_no, destination, vehicle_no, description in db.session.execute(
        select(Bill.bill_no, Bill.destination, Bill.vehicle_no, Bill.description)
    ):
        assert BILL_NO_PATTERN.fullmatch(bill_no) and bill_no.isascii(), bill_no
        assert len(vehicle_no) <= 50 and len(destination) <= 200
        assert without_controls(destination.replace("\n", "") + vehicle_no + description.replace("\n", ""))
    for qr in db.session.scalars(select(Scan.qr)):
        assert len(qr) <= 64 and without_controls(qr), repr(qr)
    for code, name in db.session.execute(select(DispatchArea.code, DispatchArea.name)):
        assert AREA_CODE_PATTERN.fullmatch(code), code
        assert without_controls(name), repr(name)
    for username in db.session.scalars(select(User.username)):
        assert USERNAME_PATTERN.fullmatch(username), username
    db.session.rollback()


def assert_sane_answer(response, wants_json: bool) -> None:
    status = response.status_code
    assert status < 500, response.get_data(as_text=True)[:500]
    assert status in (200, 201, 302, 303, 308, 400, 401, 403, 404, 405, 409, 413), status
    body = response.get_data(as_text=True)
    if status in (302, 303, 308):
        location = urlsplit(response.headers["Location"])
        assert location.netloc in ("", "localhost") and not response.headers["Location"].startswith("//")
    if response.mimetype == "text/html":
        lowered = body.lower()
        assert "<script>alert" not in lowered and "<img src=x" not in lowered
        if status >= 400:
            assert "feedback-error" in body
    if response.mimetype == "application/json" and status >= 400:
        answer = response.get_json()
        assert answer["ok"] is False
        assert answer["error"] in STATUS_BY_CODE
        assert isinstance(answer["message"], str) and answer["message"].strip()


def send(client, endpoint: Endpoint, segments: dict, fields: dict, *, as_json: bool, as_multipart: bool):
    path = endpoint.path.format(**segments)
    headers = dict(JSON) if as_json else {"Accept": "text/html"}
    if endpoint.method == "GET":
        query = urlencoded({name: value for name, value in fields.items() if not isinstance(value, Upload)})
        return client.get(f"{path}?{query.decode()}" if query else path, headers=headers)
    if as_multipart:
        boundary = f"hostile{uuid.uuid4().hex}"
        body, content_type = multipart(fields, boundary), f"multipart/form-data; boundary={boundary}"
    else:
        body, content_type = urlencoded(fields), "application/x-www-form-urlencoded"
    return client.post(path, data=body, content_type=content_type, headers=headers)


def fields_for(endpoint: Endpoint):
    return st.fixed_dictionaries({}, optional={name: field_value for name in endpoint.fields})


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{endpoint.method} {endpoint.path}" for endpoint in ENDPOINTS])
def test_no_input_breaks_an_endpoint(app, shop, endpoint):
    @PROPERTY
    @given(
        actor=st.sampled_from(endpoint.actors),
        segments=st.fixed_dictionaries({"a": path_segment, "b": path_segment}),
        fields=fields_for(endpoint),
        as_json=st.booleans(),
        as_multipart=st.booleans(),
    )
    def attempt(actor, segments, fields, as_json, as_multipart):
        response = send(shop[actor], endpoint, segments, fields, as_json=as_json, as_multipart=as_multipart)
        assert_sane_answer(response, as_json)
        assert_stored_normalised(app)

    attempt()


@pytest.mark.parametrize("action", NAMED_USER_ROUTES)
def test_hostile_user_names_in_admin_paths(app, shop, action):
    @PROPERTY
    @given(segment=path_segment.filter(lambda text: normalise_username(unquote(text)) not in EXISTING_USERS))
    def attempt(segment):
        response = shop["admin"].post(f"/admin/users/{segment}/{action}", headers=JSON)
        assert_sane_answer(response, True)
        assert response.status_code in (308, 404, 400, 405), response.status_code

    attempt()


ONCE_BROKEN = [
    ("/login", {"username": "floor\x00", "password": "x" * 10}, "anonymous"),
    ("/login", {"username": "\x00", "password": "\x00"}, "anonymous"),
    ("/scan/parent", {"qr": "SB30000", "area": "NORTH\x00"}, "biller"),
    ("/admin/users", {"username": "newbie", "role": "dispatcher", "area": "NO\x00RTH"}, "admin"),
    ("/admin/users/nobody%00/role", {"role": "biller"}, "admin"),
    ("/admin/users/floor/area", {"area": "\x00SOUTH"}, "admin"),
    ("/admin/areas", {"code": "EAST", "name": "East\x00dock"}, "admin"),
    ("/bills", {"bill_no": "B-9", "capacity": "5", "vehicle_no": "ß" * 50}, "biller"),
    ("/bills", {"bill_no": "B-10", "capacity": "5", "destination": "\x00" * 300}, "biller"),
    ("/bills", {"bill_no": "B-11", "capacity": "¹"}, "biller"),
    ("/bills", {"bill_no": "B-12", "capacity": "٣"}, "biller"),
    ("/login", {"username": "floor", "password": ("x.csv", b"secret-pass")}, "anonymous"),
]


def test_inputs_that_once_broke_a_database_stay_clean(app, shop):
    """NUL characters, letters that grow when upper-cased and files where text belongs reach no column raw."""
    for path, fields, actor in ONCE_BROKEN:
        for as_json in (True, False):
            sent = {name: Upload(value[1]) if isinstance(value, tuple) else value for name, value in fields.items()}
            boundary = "once-broken"
            response = shop[actor].post(
                path,
                data=multipart(sent, boundary),
                content_type=f"multipart/form-data; boundary={boundary}",
                headers=JSON if as_json else {},
            )
            assert response.status_code < 500, (path, fields)
            assert_sane_answer(response, as_json)
    assert_stored_normalised(app)
    vehicle = db.session.scalar(select(Bill.vehicle_no).where(Bill.bill_no == "B-9"))
    assert vehicle is None or len(vehicle) <= 50


def test_a_bad_scan_page_cursor_is_explained(make_user, login_as):
    dispatcher = login_as(make_user())
    for raw in ("¹", "٣", "1.5", "-1", "0", "9" * 19, "1e3", " 5", "0x10"):
        for name in ("limit", "before"):
            response = dispatcher.get("/api/scans", query_string={name: raw})
            assert response.status_code == 400, (name, raw)
            assert response.get_json()["message"] == f"{name} must be a positive whole number.", (name, raw)


# Payloads come back escaped on every page that shows them


def test_stored_payloads_are_escaped_on_every_page(app, shop):
    biller, admin = shop["biller"], shop["admin"]
    created = biller.post(
        "/bills",
        data={"bill_no": "B-XSS", "capacity": "3", "destination": SCRIPT, "vehicle_no": IMAGE, "description": SCRIPT},
        headers=JSON,
    )
    assert created.status_code == 201
    assert admin.post("/admin/areas", data={"code": "WEST", "name": IMAGE}, headers=JSON).status_code == 201
    assert biller.post("/bills/B-XSS/parents", data={"qr": SCRIPT}, headers=JSON).status_code == 400
    pages = {
        "/bills": biller,
        "/bills/B-XSS": biller,
        "/admin/": admin,
        "/admin/audit": admin,
        "/scans": biller,
        "/": biller,
        "/bags": biller,
        f"/bags/{quote(SCRIPT, safe='')}": biller,
        f"/scan?parent={quote(SCRIPT, safe='')}": biller,
        f"/login?next={quote(IMAGE, safe='')}": shop["anonymous"],
    }
    for path, client in pages.items():
        body = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in body.lower() and "<img src=x" not in body.lower(), path
    bill_page = biller.get("/bills/B-XSS").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bill_page
    assert "&lt;img src=x onerror=alert(1)&gt;" in bill_page.lower()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/scan/parent", {"qr": SCRIPT}),
        ("/scan/child", {"parent": "SB10001", "qr": IMAGE}),
        ("/scan/undo", {"parent": SCRIPT}),
        ("/bills", {"bill_no": SCRIPT, "capacity": "1"}),
        ("/bills/B-1/parents", {"qr": IMAGE}),
        ("/login", {"username": SCRIPT, "password": IMAGE, "next": SCRIPT}),
    ],
)
def test_refusals_repeat_payloads_escaped(shop, path, fields):
    client = shop["anonymous" if path == "/login" else "biller"]
    response = client.post(path, data=fields)
    assert 400 <= response.status_code < 500
    body = response.get_data(as_text=True)
    assert "feedback-error" in body
    assert "<script>alert" not in body.lower() and "<img src=x" not in body.lower()


# Size limits, CSRF and broken bodies on every POST route


def post_routes(app, *, uploads: bool = True) -> list[str]:
    samples = {"qr": "SB10001", "parent": "SB10001", "child": "C0001", "bill_no": "B-1", "username": "floor"}
    return sorted(
        re.sub(r"<(?:\w+:)?(\w+)>", lambda match: samples[match.group(1)], rule.rule)
        for rule in app.url_map.iter_rules()
        if "POST" in rule.methods and (uploads or not getattr(app.view_functions[rule.endpoint], UPLOAD_MARK, False))
    )


def test_bodies_over_the_limit_are_413_everywhere(app, shop):
    """Upload routes take bigger bodies; their limit is tested with the limits."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    for path in post_routes(app, uploads=False):
        client = shop["anonymous" if path == "/login" else "admin"]
        answer = client.post(path, data={"qr": "A" * limit}, headers=JSON)
        assert answer.status_code == 413, path
        assert answer.get_json()["error"] == "too_large"
        page = client.post(path, data={"qr": "A" * limit})
        assert page.status_code == 413, path
        assert "too large" in page.get_data(as_text=True)
        boundary = "limit-boundary"
        upload = multipart({"qr": Upload(b"A" * limit)}, boundary)
        answer = client.post(path, data=upload, content_type=f"multipart/form-data; boundary={boundary}", headers=JSON)
        assert answer.status_code == 413, path


def test_a_field_just_under_the_limit_is_a_clean_4xx(app, shop):
    just_under = app.config["MAX_CONTENT_LENGTH"] - 100
    for path, name in (("/scan/parent", "qr"), ("/bills", "description"), ("/login", "username")):
        client = shop["anonymous" if path == "/login" else "biller"]
        for as_json in (True, False):
            response = client.post(path, data={name: "A" * just_under}, headers=JSON if as_json else {})
            assert response.status_code in (400, 401, 413), (path, response.status_code)
            assert_sane_answer(response, as_json)
            assert "at most" in response.get_data(as_text=True) or response.status_code != 413


def test_a_form_field_over_its_own_limit_is_413_saying_so(shop):
    boundary = "big-field"
    body = multipart({"qr": "A" * 300 * 1024}, boundary)
    response = shop["biller"].post(
        "/scan/parent", data=body, content_type=f"multipart/form-data; boundary={boundary}", headers=JSON
    )
    assert response.status_code == 413
    message = response.get_json()["message"]
    assert message == "The form is too large: at most 256 KiB per field and 500 fields are accepted."


@pytest.mark.parametrize("token", [None, "", "garbage", "other-session"])
def test_every_post_route_refuses_a_missing_or_foreign_csrf_token(app, shop, token):
    if token == "other-session":
        token = fresh_client(app).csrf_token
    admin = shop["admin"]
    admin.csrf_token = None
    headers = {} if token is None else {"X-CSRFToken": token}
    for path in post_routes(app):
        answer = admin.post(path, data={"qr": "SB10001", "csrf_token": token or ""}, headers={**JSON, **headers})
        assert answer.status_code == 400, path
        assert answer.get_json()["error"] == "csrf_failed", path
        page = admin.post(path, data={"qr": "SB10001"}, headers=headers)
        assert page.status_code == 400, path
        assert "This page is too old to send" in page.get_data(as_text=True)
    # Nothing of the refused posts happened.
    assert db.session.scalar(select(Bill.status).where(Bill.bill_no == "B-1")) == "open"
    assert db.session.scalar(select(User.active).where(User.username == "floor")) is True


BROKEN_BODIES = [
    ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="qr"\r\n\r\nSB10001\r\n--x--\r\n'),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="qr"\r\n\r\nSB100'),
    ("multipart/form-data; boundary=x", b'--y\r\nContent-Disposition: form-data; name="qr"\r\n\r\nSB10001\r\n--y--'),
    ("multipart/form-data; boundary=x", b"--x\r\nno headers here\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--x--\r\n"),
    ("multipart/form-data; boundary=" + "x" * 300, b"\x00\xff" * 100),
    ('multipart/form-data; boundary=""', b"\r\n\r\n"),
    ("application/x-www-form-urlencoded", b"qr=%ZZ%&&==&qr"),
    ("application/x-www-form-urlencoded", b"\xff\xfe\x00qr=SB"),
    ("application/json", b'{"qr": "SB10001"'),
    ("text/plain", b"qr=SB10001"),
]


@pytest.mark.parametrize("path", ["/scan/parent", "/scan/child", "/bills", "/admin/users", "/login"])
def test_malformed_bodies_are_400(shop, path):
    client = shop["anonymous" if path == "/login" else "admin"]
    for content_type, body in BROKEN_BODIES:
        for headers in (JSON, {}):
            response = client.post(path, data=body, content_type=content_type, headers=headers)
            assert response.status_code == 400, (path, content_type, body, response.status_code)
            assert_sane_answer(response, headers == JSON)
