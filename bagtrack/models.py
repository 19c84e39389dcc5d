"""The warehouse in tables.

The database enforces what it can: one row per normalised QR and bill
number, a child in at most one parent (a single ``parent_id``), a parent on at
most one bill (a single ``bill_id``), valid kinds and statuses, and counters
that never go negative or past capacity.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import NamedTuple

from flask_login import UserMixin
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer, "sqlite")

ROLES = ("dispatcher", "biller", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
# The tally's area id for bills, which belong to no dispatch area (and for scans of no area).
OFFICE_TALLY = 0


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DispatchArea(db.Model):
    __tablename__ = "dispatch_area"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (CheckConstraint("length(code) between 1 and 20", name="code_length"),)


class AreaRef(NamedTuple):
    """A dispatch area as a plain value, for objects that outlive their session."""

    id: int
    code: str
    name: str


class Identity(UserMixin):
    """What logging in and the access rules ask of a user: the row and its snapshot alike."""

    def get_id(self) -> str:
        # The id carries the session version: a password reset or disable ends old sessions.
        return f"{self.id}:{self.session_version}"

    @property
    def is_active(self) -> bool:
        return self.active

    def has_role(self, role: str) -> bool:
        """Roles are cumulative: an admin may do all a biller may, and so on."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class User(Identity, db.Model):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    area_id: Mapped[int | None] = mapped_column(ForeignKey("dispatch_area.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_failed_at: Mapped[datetime | None] = mapped_column(DateTime)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    # Changing it (password change or reset, disable, role or area change) ends every session of the user.
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The TOTP secret, encrypted (Fernet); None: no two-factor login.
    totp_secret: Mapped[str | None] = mapped_column(Text)
    # The last TOTP time step accepted: a code is good for one login.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)

    area: Mapped[DispatchArea | None] = relationship(lazy="joined")

    __table_args__ = (
        CheckConstraint("role in ('dispatcher', 'biller', 'admin')", name="role_valid"),
        CheckConstraint("role <> 'dispatcher' or area_id is not null", name="dispatcher_has_area"),
        CheckConstraint("failed_logins >= 0", name="failed_logins_non_negative"),
    )

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    @property
    def has_2fa(self) -> bool:
        return self.totp_secret is not None

    def is_locked(self, now: datetime | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (now or utcnow())


class LoginSession(db.Model):
    """One logged-in device: its cookie names this row, and logging out there deletes it."""

    __tablename__ = "login_session"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RecoveryCode(db.Model):
    """A one-time code that stands in for a TOTP code; only its keyed hash is stored."""

    __tablename__ = "recovery_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))


class Bill(db.Model):
    __tablename__ = "bill"

    id: Mapped[int] = mapped_column(primary_key=True)
    bill_no: Mapped[str] = mapped_column(String(50), unique=True)
    status: Mapped[str] = mapped_column(String(10), default="open")
    capacity: Mapped[int] = mapped_column(Integer)
    destination: Mapped[str] = mapped_column(String(200), default="")
    vehicle_no: Mapped[str] = mapped_column(String(50), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    parent_count: Mapped[int] = mapped_column(Integer, default=0)
    child_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        CheckConstraint("status in ('open', 'closed', 'cancelled')", name="status_valid"),
        CheckConstraint("capacity between 1 and 500", name="capacity_range"),
        CheckConstraint("parent_count between 0 and capacity", name="parent_count_range"),
        CheckConstraint("child_count >= 0", name="child_count_non_negative"),
        CheckConstraint("status <> 'closed' or parent_count > 0", name="closed_not_empty"),
        CheckConstraint("status <> 'cancelled' or parent_count = 0", name="cancelled_empty"),
        Index("ix_bill_status_id", "status", "id"),
        # The bill list's search: a bill number prefix (PostgreSQL, whatever the collation) or destination words.
        Index("ix_bill_bill_no_prefix", "bill_no", postgresql_ops={"bill_no": "varchar_pattern_ops"}),
        Index(
            "ix_bill_destination_words",
            text("to_tsvector('simple', destination)"),
            postgresql_using="gin",
        ).ddl_if(dialect="postgresql"),
        # The daily dispatch summary: the bills closed in one day.
        Index("ix_bill_closed_at", "closed_at"),
    )


class Bag(db.Model):
    """A parent bag (holds children, may sit on a bill) or a child bag."""

    __tablename__ = "bag"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    qr: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(10))
    area_id: Mapped[int] = mapped_column(ForeignKey("dispatch_area.id"))
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("bag.id"))
    bill_id: Mapped[int | None] = mapped_column(ForeignKey("bill.id"))
    child_count: Mapped[int] = mapped_column(Integer, default=0)
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    linked_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    linked_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    area: Mapped[DispatchArea] = relationship(lazy="joined", innerjoin=True)
    parent: Mapped[Bag | None] = relationship(remote_side=[id], lazy="raise")
    bill: Mapped[Bill | None] = relationship(lazy="raise")

    __table_args__ = (
        CheckConstraint("kind in ('parent', 'child')", name="kind_valid"),
        CheckConstraint(
            "(kind = 'parent' and status in ('open', 'complete') and parent_id is null"
            " and child_count between 0 and capacity)"
            " or (kind = 'child' and bill_id is null and child_count = 0 and capacity = 0"
            " and ((parent_id is null and status = 'loose')"
            " or (parent_id is not null and status = 'packed')))",
            name="kind_shape",
        ),
        CheckConstraint(
            "kind <> 'parent' or status = 'complete' or child_count < capacity",
            name="full_parent_complete",
        ),
        Index("ix_bag_parent_id", "parent_id", postgresql_where=text("parent_id is not null")),
        Index("ix_bag_bill_id", "bill_id", postgresql_where=text("bill_id is not null")),
        # Keyset pagination of the bag list, newest first, per filter.
        Index("ix_bag_kind_status_id", "kind", "status", "id"),
        Index("ix_bag_area_kind_status_id", "area_id", "kind", "status", "id"),
        Index("ix_bag_area_id_id", "area_id", "id"),
        # Parents are one bag in thirty: an area's parents, newest first, without reading its children.
        Index(
            "ix_bag_area_id_id_parents",
            "area_id",
            "id",
            postgresql_where=text("kind = 'parent'"),
            sqlite_where=text("kind = 'parent'"),
        ),
        # Codes are unique. On PostgreSQL the one index on them also serves the prefix search ("q"),
        # whatever the database collation: a pattern operator class answers equality as well.
        Index("uq_bag_qr", "qr", unique=True, postgresql_ops={"qr": "varchar_pattern_ops"}),
    )

    @property
    def is_parent(self) -> bool:
        return self.kind == "parent"


class Scan(db.Model):
    """One line of the scan log: every accepted and every refused scan."""

    __tablename__ = "scan"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(12))
    outcome: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(32))
    qr: Mapped[str] = mapped_column(String(64), default="")
    # A deleted bag's scan-log rows stay, with its code in ``qr``.
    bag_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("bag.id", ondelete="SET NULL"))
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("bag.id", ondelete="SET NULL"))
    bill_id: Mapped[int | None] = mapped_column(ForeignKey("bill.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    area_id: Mapped[int | None] = mapped_column(ForeignKey("dispatch_area.id"))

    __table_args__ = (
        CheckConstraint(
            "kind in ('parent', 'child', 'undo', 'close', 'load', 'unload', 'remove', 'reopen')", name="kind_valid"
        ),
        CheckConstraint(
            "(outcome = 'ok') or (outcome = 'rejected' and reason is not null)",
            name="outcome_valid",
        ),
        Index("ix_scan_bag_id_id", "bag_id", "id"),
        Index("ix_scan_parent_id_id", "parent_id", "id"),
        # Scans of billed parents only: most scans are of bags on no bill.
        Index(
            "ix_scan_bill_id_id",
            "bill_id",
            "id",
            postgresql_where=text("bill_id is not null"),
            sqlite_where=text("bill_id is not null"),
        ),
        Index("ix_scan_area_id_id", "area_id", "id"),
        Index("ix_scan_user_id_id", "user_id", "id"),
        # The scan log's filters, each keyset-paginated by id, also within a dispatcher's area.
        # Refusals and duplicates are a small share of the log: their partial indexes cost little.
        Index("ix_scan_kind_id", "kind", "id"),
        Index(
            "ix_scan_reason_id",
            "reason",
            "id",
            postgresql_where=text("reason is not null"),
            sqlite_where=text("reason is not null"),
        ),
        Index(
            "ix_scan_area_id_reason_id",
            "area_id",
            "reason",
            "id",
            postgresql_where=text("reason is not null"),
            sqlite_where=text("reason is not null"),
        ),
        Index(
            "ix_scan_rejected_id",
            "id",
            postgresql_where=text("outcome = 'rejected'"),
            sqlite_where=text("outcome = 'rejected'"),
        ),
        Index(
            "ix_scan_rejected_area_id_id",
            "area_id",
            "id",
            postgresql_where=text("outcome = 'rejected'"),
            sqlite_where=text("outcome = 'rejected'"),
        ),
    )


class Tally(db.Model):
    """Dashboard counters, kept by the same transactions that change the bags.

    Each transaction adds its deltas to one of a few shard rows for its area
    and day, so concurrent scans rarely wait on the same row. Bills belong to
    no area and are counted under ``area_id = 0``.
    """

    __tablename__ = "tally"

    area_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parents: Mapped[int] = mapped_column(BigInteger, default=0)
    children: Mapped[int] = mapped_column(BigInteger, default=0)
    parents_complete: Mapped[int] = mapped_column(BigInteger, default=0)
    parents_billed: Mapped[int] = mapped_column(BigInteger, default=0)
    bills_open: Mapped[int] = mapped_column(BigInteger, default=0)
    bills_closed: Mapped[int] = mapped_column(BigInteger, default=0)
    scans_ok: Mapped[int] = mapped_column(BigInteger, default=0)
    scans_rejected: Mapped[int] = mapped_column(BigInteger, default=0)


TALLY_FIELDS = (
    "parents",
    "children",
    "parents_complete",
    "parents_billed",
    "bills_open",
    "bills_closed",
    "scans_ok",
    "scans_rejected",
)


class TallyHour(db.Model):
    """Scans per local hour, area, user and refusal reason, kept with :class:`Tally`.

    ``hour`` is the UTC moment the local hour began, so a local day is a
    range of hours whatever the zone. ``user_id`` 0 counts scans of no user
    (imports, the seed) and ``reason`` '' counts accepted scans, any other
    value refusals for that reason. A user scans one thing after another, so
    the row a scan adds to is hardly ever waited on and needs no shards.
    ``parents_complete`` is what the accepted scans of that row changed.
    ``first_at`` and ``last_at`` are the times of the first and last scan-log
    row it counts (none when it counts no scans), kept by the same upsert.
    """

    __tablename__ = "tally_hour"

    hour: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    area_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    scans: Mapped[int] = mapped_column(BigInteger, default=0)
    parents_complete: Mapped[int] = mapped_column(BigInteger, default=0)
    first_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuditEntry(db.Model):
    """Who changed what: every admin, bill and close-short action."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    actor: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))

    # The history of one bill or bag (who closed a bill, for its dispatch note).
    __table_args__ = (Index("ix_audit_log_target_id", "target", "id"),)
