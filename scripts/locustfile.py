"""Virtual warehouse users for the benchmark (``scripts/bench.py`` drives them).

Scanner operators and billers, each with an account of their own, log in
through the real login form, keep the page's CSRF token, and post the same
forms a handheld posts, asking for JSON, over one keep-alive connection each.
What they do depends on the phase the benchmark is in (``SHARED.mode``):

- ``floor``: the real floor, each user acting about once a second;
- ``mixed``: the same mix with no pause (saturation);
- ``scan`` / ``stats``: every user does only child scans / only ``/api/stats``;
- ``noop`` / ``redis`` / ``write``: the baseline app's routes, hammered alone.

The mix on the floor: child scans 70 %, parent scans 10 % (resuming the
user's parent), bill loading 5 % (the billers, who search the bill list one
time in ten), dashboard 5 %, ``/api/stats`` 5 %, a seeded bag of the user's
area 5 % (page and API by halves), a filtered scan log 1 %. A
scanner fills its own parent and starts a new one, with a fresh code from a
range reserved for the benchmark, as soon as the answer says it is complete;
billers load those completed parents (or seeded complete ones) onto bills.

Run by hand against a server the benchmark prepared::

    BENCH_PLAN=bench/work/plan.json locust -f scripts/locustfile.py --host http://127.0.0.1:8000
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from locust import FastHttpUser, task
from locust.exception import StopUser

CSRF_FIELD = re.compile(r"<input\b[^>]*\bname=\"csrf_token\"[^>]*>")
VALUE = re.compile(r"\bvalue=\"([^\"]+)\"")
CSRF_META = re.compile(r"<meta\s+name=\"csrf-token\"\s+content=\"([^\"]+)\"")
JSON = {"Accept": "application/json"}
PAGE = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

FLOOR_MIX = (
    ("child_scan", 70),
    ("resume_parent", 10),
    ("dashboard", 5),
    ("stats", 5),
    ("bag_page", 2.5),
    ("bag_api", 2.5),
    ("filtered_scans", 1),
    ("dashboard_live", 2),
    ("operators_report", 1),
)
# What a supervisor asks the scan log and the office asks the bill list.
SCAN_FILTERS = ("outcome=rejected", "reason=duplicate", "kind=parent", "reason=parent_full", "from={today}")
BILL_FILTERS = ("status=open", "q=BL-0", "q=hamburg", "status=closed&from={today}")
# The baseline app's routes by mode. In paired rounds both apps' users are up
# at once: whoever the current mode is not for waits it out.
BASELINE_ROUTES = {"noop": ("GET", "/noop"), "redis": ("GET", "/redis"), "write": ("POST", "/write")}
IDLE_S = 0.2
# One biller action in this many reads the day's dispatch summary instead of loading.
DAILY_REPORT_EVERY = 20
BILL_CAPACITY = 20


def base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = BASE36[digit] + digits
        if number == 0:
            return digits


@dataclass
class Plan:
    """What the benchmark prepared: accounts, sample bags and the code ranges it may use."""

    password: str
    dispatchers: list[tuple[str, str]]  # (username, area code)
    billers: list[str]
    bags_by_area: dict[str, list[str]]
    loadable_parents: list[str]
    first_parent_number: int
    run_tag: str


@dataclass
class Shared:
    """State every virtual user of this process shares (greenlets: no locks needed)."""

    plan: Plan | None = None
    mode: str = "floor"
    user_numbers: itertools.count = field(default_factory=itertools.count)
    # One account per user: each class takes the next of its own accounts.
    account_numbers: Counter = field(default_factory=Counter)
    parent_numbers: itertools.count = field(default_factory=itertools.count)
    completed_parents: deque = field(default_factory=deque)
    seeded_parents: deque = field(default_factory=deque)
    logged_in: int = 0
    login_failures: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)


SHARED = Shared()


def configure(plan: Plan) -> None:
    SHARED.plan = plan
    SHARED.parent_numbers = itertools.count(plan.first_parent_number)
    SHARED.seeded_parents = deque(plan.loadable_parents)
    SHARED.completed_parents.clear()
    SHARED.account_numbers.clear()
    SHARED.logged_in = 0
    SHARED.login_failures.clear()
    SHARED.notes.clear()


def paced_wait(user) -> float:
    """About one action a second on the floor, jittered so 60 users do not fire in step; none otherwise."""
    if SHARED.mode != "floor":
        return 0.0
    elapsed = time.monotonic() - user.action_started
    return max(0.0, random.uniform(0.8, 1.2) - elapsed)


def answer_json(response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def refuse(response, body: dict | None) -> None:
    if body and "error" in body:
        response.failure(f"{response.status_code} {body['error']}: {body.get('message', '')}")
    else:
        response.failure(f"{response.status_code} unexpected answer")


class WarehouseUser(FastHttpUser):
    """A logged-in person on the floor; subclasses say who and what they do."""

    abstract = True
    wait_time = paced_wait

    def on_start(self) -> None:
        self.number = next(SHARED.user_numbers)
        self.action_started = time.monotonic()
        self.username, self.area = self.account()
        self.parent: str | None = None
        self.child_numbers = itertools.count()
        self.log_in()
        # Users come up together; spread their first action over a second.
        time.sleep(random.random())

    def account(self) -> tuple[str, str]:
        raise NotImplementedError

    def account_number(self) -> int:
        number = SHARED.account_numbers[type(self).__name__]
        SHARED.account_numbers[type(self).__name__] += 1
        return number

    def log_in(self) -> None:
        plan = SHARED.plan
        form = self.client.get("/login", name="/login (form)", headers=PAGE)
        field_tag = CSRF_FIELD.search(form.text or "")
        token = VALUE.search(field_tag.group(0)) if field_tag else None
        if token is None:
            self.login_failed(f"no csrf_token field on /login ({form.status_code})")
        answer = self.client.post(
            "/login",
            name="/login",
            data={"username": self.username, "password": plan.password, "csrf_token": token.group(1)},
            headers=PAGE,
            allow_redirects=False,
        )
        if answer.status_code != 303 or "/login" in (answer.headers.get("location") or ""):
            self.login_failed(f"login answered {answer.status_code}")
        page = self.client.get("/scan", name="/scan (page)", headers=PAGE)
        meta = CSRF_META.search(page.text or "")
        if meta is None:
            self.login_failed(f"no csrf-token meta on /scan ({page.status_code})")
        self.post_headers = {**JSON, "X-CSRFToken": meta.group(1)}
        SHARED.logged_in += 1

    def login_failed(self, reason: str) -> None:
        SHARED.login_failures[reason] += 1
        raise StopUser(reason)

    @task
    def act(self) -> None:
        self.action_started = time.monotonic()
        getattr(self, self.next_action())()

    def next_action(self) -> str:
        if SHARED.mode in BASELINE_ROUTES:
            return "idle"
        if SHARED.mode == "scan":
            return "child_scan"
        if SHARED.mode == "stats":
            return "stats"
        return self.floor_action()

    def floor_action(self) -> str:
        raise NotImplementedError

    def idle(self) -> None:
        time.sleep(IDLE_S)

    # Scanning: one request per action, so every phase counts requests alike.

    def child_scan(self) -> None:
        if self.parent is None:
            self.start_parent()
            return
        plan = SHARED.plan
        child = f"L{plan.run_tag}{base36(self.number).rjust(2, '0')}{base36(next(self.child_numbers))}"
        with self.client.post(
            "/scan/child",
            name="/scan/child",
            data={"parent": self.parent, "qr": child},
            headers=self.post_headers,
            catch_response=True,
        ) as response:
            body = answer_json(response)
            if response.status_code in (200, 201) and body and body.get("ok"):
                response.success()
                parent = body.get("parent") or {}
                if parent.get("status") == "complete" or parent.get("child_count", 0) >= parent.get("capacity", 1):
                    SHARED.completed_parents.append(self.parent)
                    self.parent = None
            elif response.status_code == 409 and body and body.get("error") == "parent_full":
                # Counts are tracked from the answers, so this should not happen; it is not a failure.
                response.success()
                SHARED.notes["parent_full answers"] += 1
                self.parent = None
            else:
                refuse(response, body)

    def start_parent(self) -> None:
        self.scan_parent(f"SB{next(SHARED.parent_numbers):07d}", expect_new=True)

    def resume_parent(self) -> None:
        if self.parent is None:
            self.start_parent()
        else:
            self.scan_parent(self.parent, expect_new=False)

    def scan_parent(self, qr: str, *, expect_new: bool) -> None:
        with self.client.post(
            "/scan/parent",
            name="/scan/parent",
            data={"qr": qr, "area": self.area},
            headers=self.post_headers,
            catch_response=True,
        ) as response:
            body = answer_json(response)
            expected = 201 if expect_new else 200
            if response.status_code == expected and body and body.get("ok"):
                response.success()
                self.parent = qr
            else:
                refuse(response, body)

    # Looking things up.

    def dashboard(self) -> None:
        self.get_page("/", "/")

    def stats(self) -> None:
        self.get_json("/api/stats", "/api/stats", "bags")

    def dashboard_live(self) -> None:
        """What an open dashboard fetches every few seconds: figures, charts and the latest scans."""
        with self.client.get("/dashboard/live", name="/dashboard/live", headers=PAGE, catch_response=True) as response:
            if response.status_code == 200 and "chart-hours" in (response.text or ""):
                response.success()
            else:
                response.failure(f"{response.status_code} on /dashboard/live")

    def operators_report(self) -> None:
        self.get_json("/api/reports/operators", "/api/reports/operators", "operators")

    def daily_report(self) -> None:
        self.get_json("/api/reports/daily", "/api/reports/daily", "totals")

    def seeded_bag(self) -> str:
        bags = SHARED.plan.bags_by_area.get(self.area) or [
            b for area in SHARED.plan.bags_by_area.values() for b in area
        ]
        return random.choice(bags)

    def bag_page(self) -> None:
        self.get_page(f"/bags/{self.seeded_bag()}", "/bags/<qr>")

    def bag_api(self) -> None:
        qr = self.seeded_bag()
        with self.client.get(f"/api/bags/{qr}", name="/api/bags/<qr>", headers=JSON, catch_response=True) as response:
            body = answer_json(response)
            if response.status_code == 200 and body and body.get("qr") == qr:
                response.success()
            else:
                refuse(response, body)

    def filtered_scans(self) -> None:
        query = random.choice(SCAN_FILTERS).format(today=time.strftime("%Y-%m-%d", time.gmtime()))
        self.get_page(f"/scans?{query}", "/scans?<filters>")

    def filtered_bills(self) -> None:
        query = random.choice(BILL_FILTERS).format(today=time.strftime("%Y-%m-%d", time.gmtime()))
        self.get_page(f"/bills?{query}", "/bills?<filters>")

    def get_json(self, path: str, name: str, key: str) -> None:
        """GET a JSON answer; a success is a 200 whose body holds ``key``."""
        with self.client.get(path, name=name, headers=JSON, catch_response=True) as response:
            body = answer_json(response)
            if response.status_code == 200 and body and key in body:
                response.success()
            else:
                refuse(response, body)

    def get_page(self, path: str, name: str) -> None:
        with self.client.get(path, name=name, headers=PAGE, catch_response=True) as response:
            if response.status_code == 200 and "<html" in (response.text or "")[:200].lower():
                response.success()
            else:
                response.failure(f"{response.status_code} on {name}")


class ScannerUser(WarehouseUser):
    """A dispatcher with a handheld, filling parents in their own area."""

    def account(self) -> tuple[str, str]:
        dispatchers = SHARED.plan.dispatchers
        return dispatchers[self.account_number() % len(dispatchers)]

    def floor_action(self) -> str:
        names, weights = zip(*FLOOR_MIX, strict=True)
        return random.choices(names, weights)[0]


class BillerUser(WarehouseUser):
    """The dispatch office: opens bills and loads complete parents onto them.

    Billers may scan in every area; when the phase asks everyone to scan,
    their new parents go to the areas in turn.
    """

    fixed_count = 3

    def account(self) -> tuple[str, str]:
        plan = SHARED.plan
        areas = sorted(plan.bags_by_area) or [plan.dispatchers[0][1]]
        number = self.account_number()
        return plan.billers[number % len(plan.billers)], areas[number % len(areas)]

    def on_start(self) -> None:
        self.bill: str | None = None
        self.bill_full = False
        self.last_loaded: str | None = None
        self.bill_numbers = itertools.count()
        super().on_start()

    def floor_action(self) -> str:
        if random.randrange(DAILY_REPORT_EVERY) == 0:
            return "daily_report"
        return random.choices(("bill_loading", "filtered_bills"), (9, 1))[0]

    def bill_loading(self) -> None:
        if self.bill is None or self.bill_full:
            self.open_bill()
            return
        if SHARED.completed_parents:
            qr = SHARED.completed_parents.popleft()
        elif SHARED.seeded_parents:
            qr = SHARED.seeded_parents.popleft()
        elif self.last_loaded:
            # Nothing new to load: scanners double-fire too, and a repeat is a duplicate success.
            qr = self.last_loaded
        else:
            self.get_page(f"/bills/{self.bill}", "/bills/<bill_no>")
            return
        with self.client.post(
            f"/bills/{self.bill}/parents",
            name="/bills/<bill_no>/parents",
            data={"qr": qr, "confirm": "1"},
            headers=self.post_headers,
            catch_response=True,
        ) as response:
            body = answer_json(response)
            if response.status_code in (200, 201) and body and body.get("ok"):
                response.success()
                self.last_loaded = qr
                bill = body.get("bill") or {}
                self.bill_full = bill.get("parent_count", 0) >= bill.get("capacity", BILL_CAPACITY)
            else:
                refuse(response, body)

    def open_bill(self) -> None:
        bill_no = f"BB{SHARED.plan.run_tag}{base36(self.number)}-{next(self.bill_numbers)}"
        with self.client.post(
            "/bills",
            name="/bills",
            data={
                "bill_no": bill_no,
                "capacity": str(BILL_CAPACITY),
                "destination": "Benchmark depot",
                "vehicle_no": f"BENCH-{self.number}",
            },
            headers=self.post_headers,
            catch_response=True,
        ) as response:
            body = answer_json(response)
            if response.status_code == 201 and body and body.get("ok"):
                response.success()
                self.bill = bill_no
                self.bill_full = False
                self.last_loaded = None
            else:
                refuse(response, body)


class BaselineUser(FastHttpUser):
    """Hammers one route of ``scripts/baseline_app.py``: the physical ceiling of this machine."""

    wait_time = paced_wait

    def on_start(self) -> None:
        self.action_started = time.monotonic()

    @task
    def hit(self) -> None:
        self.action_started = time.monotonic()
        if SHARED.mode not in BASELINE_ROUTES:
            time.sleep(IDLE_S)
            return
        method, path = BASELINE_ROUTES[SHARED.mode]
        with self.client.request(method, path, name=f"baseline {path}", headers=JSON, catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"{response.status_code} on {path}")


def plan_from_file(path: str) -> Plan:
    with open(path, encoding="utf-8") as plan_file:
        raw = json.load(plan_file)
    raw["dispatchers"] = [tuple(pair) for pair in raw["dispatchers"]]
    return Plan(**raw)


if os.environ.get("BENCH_PLAN"):
    configure(plan_from_file(os.environ["BENCH_PLAN"]))
    SHARED.mode = os.environ.get("BENCH_MODE", "floor")
