"""One index on bag codes; the scan log's bill index holds billed scans only

A bag's code had two indexes on PostgreSQL: the unique constraint's, for
equality, and a ``varchar_pattern_ops`` one for the prefix search. A
pattern operator class answers equality too, so one unique index built with
it does both, and every new bag writes one code index instead of two. The
scan log's ``(bill_id, id)`` index kept an entry for every scan, though
only scans of billed parents have a bill: it becomes partial.

On PostgreSQL the new unique index is built before the constraint goes, in
the same transaction, so codes are never unguarded. Building it takes a
lock that holds off writes to ``bag`` while it runs (seconds per million
bags). SQLite copies the bag table to drop the constraint.

Revision ID: 3b7e51c0d2a4
Revises: aecdfdb4026c
Create Date: 2026-12-04 23:05:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '3b7e51c0d2a4'
down_revision = 'aecdfdb4026c'
branch_labels = None
depends_on = None

BILLED = sa.text('bill_id is not null')
PATTERN_OPS = {'qr': 'varchar_pattern_ops'}


def upgrade():
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_index('ix_scan_bill_id_id')
        batch_op.create_index(
            'ix_scan_bill_id_id', ['bill_id', 'id'], unique=False, postgresql_where=BILLED, sqlite_where=BILLED
        )
    if op.get_bind().dialect.name == 'postgresql':
        op.create_index('uq_bag_qr_new', 'bag', ['qr'], unique=True, postgresql_ops=PATTERN_OPS)
        op.drop_constraint('uq_bag_qr', 'bag', type_='unique')
        op.execute('ALTER INDEX uq_bag_qr_new RENAME TO uq_bag_qr')
        op.drop_index('ix_bag_qr_prefix', table_name='bag', postgresql_ops=PATTERN_OPS)
    else:
        with op.batch_alter_table('bag', schema=None) as batch_op:
            batch_op.drop_index('ix_bag_qr_prefix')
            batch_op.drop_constraint('uq_bag_qr', type_='unique')
            batch_op.create_index('uq_bag_qr', ['qr'], unique=True)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.create_index('ix_bag_qr_prefix', 'bag', ['qr'], unique=False, postgresql_ops=PATTERN_OPS)
        op.execute('ALTER INDEX uq_bag_qr RENAME TO uq_bag_qr_old')
        op.create_unique_constraint('uq_bag_qr', 'bag', ['qr'])
        op.drop_index('uq_bag_qr_old', table_name='bag')
    else:
        with op.batch_alter_table('bag', schema=None) as batch_op:
            batch_op.drop_index('uq_bag_qr')
            batch_op.create_unique_constraint('uq_bag_qr', ['qr'])
            batch_op.create_index('ix_bag_qr_prefix', ['qr'], unique=False)
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_index('ix_scan_bill_id_id')
        batch_op.create_index('ix_scan_bill_id_id', ['bill_id', 'id'], unique=False)
