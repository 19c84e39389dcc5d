"""tally per local hour, bills by closing time

The per-hour tally starts from the scan log as it is: every row is counted
in its local hour (``BAGTRACK_TIMEZONE``), area, user and reason. Parents
completed before this migration are counted, by no user, in the first hour
of the day their tally row carries; the days of existing tally rows are kept
as they are and read as local days from now on.

Revision ID: abd332ada525
Revises: c5126cc6a89b
Create Date: 2026-12-04 11:27:10.219928

"""
import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'abd332ada525'
down_revision = 'c5126cc6a89b'
branch_labels = None
depends_on = None

QUARTER_S = 900


def upgrade():
    tally_hour = op.create_table('tally_hour',
    sa.Column('hour', sa.DateTime(), nullable=False),
    sa.Column('area_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('user_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('scans', sa.BigInteger(), nullable=False),
    sa.Column('parents_complete', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('hour', 'area_id', 'user_id', 'reason', name=op.f('pk_tally_hour'))
    )
    with op.batch_alter_table('bill', schema=None) as batch_op:
        batch_op.create_index('ix_bill_closed_at', ['closed_at'], unique=False)

    zone = ZoneInfo((os.environ.get('BAGTRACK_TIMEZONE') or '').strip() or 'UTC')

    def stored(moment):
        return moment.astimezone(UTC).replace(tzinfo=None)

    def hour_start(moment):
        local = moment.replace(tzinfo=UTC).astimezone(zone)
        return stored(local.replace(minute=0, second=0, microsecond=0))

    connection = op.get_bind()
    if connection.dialect.name == 'postgresql':
        quarter = f'floor(extract(epoch from at) / {QUARTER_S})::bigint'
    else:
        quarter = f"cast(strftime('%s', at) as integer) / {QUARTER_S}"
    hours = {}
    rows = connection.execute(sa.text(
        f"SELECT {quarter}, coalesce(area_id, 0), coalesce(user_id, 0),"
        " CASE WHEN outcome = 'ok' THEN '' ELSE reason END, count(*) FROM scan GROUP BY 1, 2, 3, 4"
    ))
    for quarter_no, area_id, user_id, reason, scans in rows:
        moment = datetime(1970, 1, 1) + timedelta(seconds=int(quarter_no) * QUARTER_S)
        key = (hour_start(moment), area_id, user_id, reason)
        hours.setdefault(key, [0, 0])[0] += scans
    completed = connection.execute(sa.text(
        "SELECT area_id, day, sum(parents_complete) FROM tally GROUP BY area_id, day"
        " HAVING sum(parents_complete) <> 0"
    ))
    for area_id, day, complete in completed:
        if isinstance(day, str):
            day = datetime.strptime(day, '%Y-%m-%d').date()
        first_hour = stored(datetime(day.year, day.month, day.day, tzinfo=zone))
        hours.setdefault((first_hour, area_id, 0, ''), [0, 0])[1] += complete
    if hours:
        op.bulk_insert(tally_hour, [
            {'hour': hour, 'area_id': area_id, 'user_id': user_id, 'reason': reason,
             'scans': scans, 'parents_complete': complete}
            for (hour, area_id, user_id, reason), (scans, complete) in hours.items()
        ])


def downgrade():
    with op.batch_alter_table('bill', schema=None) as batch_op:
        batch_op.drop_index('ix_bill_closed_at')
    op.drop_table('tally_hour')
