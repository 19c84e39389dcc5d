"""first and last scan of each per-hour tally row

Each row of the per-hour tally keeps the time of the first and the last
scan-log row it counts, so the operator report reads them from the tally.
Existing rows get them from the scan log as it is: one pass over the log
grouped by UTC quarter hour, area, user and reason, the quarters gathered
into local hours (``BAGTRACK_TIMEZONE``) and written by one UPDATE. Rows
that count no scans (parents completed before the per-hour tally existed,
hours whose scans were all pruned) keep none.

Revision ID: aecdfdb4026c
Revises: abd332ada525
Create Date: 2026-12-04 14:50:00.000000

"""
import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'aecdfdb4026c'
down_revision = 'abd332ada525'
branch_labels = None
depends_on = None

QUARTER_S = 900

# Each quarter's start minus its offset into the local hour is that hour's start (UTC).
POSTGRESQL_BACKFILL = f"""
UPDATE tally_hour t SET first_at = s.first_at, last_at = s.last_at
FROM (
    SELECT start - (local_start - date_trunc('hour', local_start)) AS hour, area_id, user_id, reason,
           min(first_at) AS first_at, max(last_at) AS last_at
    FROM (
        SELECT start, (start AT TIME ZONE 'UTC') AT TIME ZONE :zone AS local_start,
               area_id, user_id, reason, first_at, last_at
        FROM (
            SELECT timestamp '1970-01-01' + quarter * interval '{QUARTER_S} seconds' AS start,
                   area_id, user_id, reason, first_at, last_at
            FROM (
                SELECT floor(extract(epoch from at) / {QUARTER_S})::bigint AS quarter,
                       coalesce(area_id, 0) AS area_id, coalesce(user_id, 0) AS user_id,
                       CASE WHEN outcome = 'ok' THEN '' ELSE reason END AS reason,
                       min(at) AS first_at, max(at) AS last_at
                FROM scan GROUP BY 1, 2, 3, 4
            ) quarters
        ) moments
    ) local_moments
    GROUP BY 1, 2, 3, 4
) s
WHERE t.hour = s.hour AND t.area_id = s.area_id AND t.user_id = s.user_id AND t.reason = s.reason
"""


def upgrade():
    with op.batch_alter_table('tally_hour', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_at', sa.DateTime(), nullable=True))

    zone_name = (os.environ.get('BAGTRACK_TIMEZONE') or '').strip() or 'UTC'
    connection = op.get_bind()
    if connection.dialect.name == 'postgresql':
        connection.execute(sa.text(POSTGRESQL_BACKFILL), {'zone': zone_name})
    else:
        _backfill_in_python(connection, ZoneInfo(zone_name))


def _backfill_in_python(connection, zone):
    """SQLite has no time zones: the quarters become local hours here."""

    def hour_start(moment):
        local = moment.replace(tzinfo=UTC).astimezone(zone)
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC).replace(tzinfo=None)

    rows = connection.execute(sa.text(
        f"SELECT cast(strftime('%s', at) as integer) / {QUARTER_S}, coalesce(area_id, 0), coalesce(user_id, 0),"
        " CASE WHEN outcome = 'ok' THEN '' ELSE reason END, min(at), max(at) FROM scan GROUP BY 1, 2, 3, 4"
    ))
    hours = {}
    for quarter_no, area_id, user_id, reason, first_at, last_at in rows:
        moment = datetime(1970, 1, 1) + timedelta(seconds=int(quarter_no) * QUARTER_S)
        # Stored as text of one fixed format: the text orders as the moments do.
        times = hours.setdefault((hour_start(moment), area_id, user_id, reason), [first_at, last_at])
        times[0], times[1] = min(times[0], first_at), max(times[1], last_at)
    if hours:
        connection.execute(
            sa.text(
                "UPDATE tally_hour SET first_at = :first_at, last_at = :last_at"
                " WHERE hour = :hour AND area_id = :area_id AND user_id = :user_id AND reason = :reason"
            ).bindparams(sa.bindparam('hour', type_=sa.DateTime())),
            [
                {'hour': hour, 'area_id': area_id, 'user_id': user_id, 'reason': reason,
                 'first_at': first_at, 'last_at': last_at}
                for (hour, area_id, user_id, reason), (first_at, last_at) in hours.items()
            ],
        )


def downgrade():
    with op.batch_alter_table('tally_hour', schema=None) as batch_op:
        batch_op.drop_column('last_at')
        batch_op.drop_column('first_at')
