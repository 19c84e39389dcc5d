"""Corrections, cancelled bills and list filters

Bills may be cancelled (kept empty, for the record); the scan log records
children removed and parents reopened by the office, and keeps the rows of a
deleted bag (its code stays in ``qr``). Indexes serve the filters of the scan
log and the bill list, and the audit history of one bill or bag.

Revision ID: c5126cc6a89b
Revises: 6f1ce3d37fb4
Create Date: 2026-12-04 11:25:22.303176

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c5126cc6a89b'
down_revision = '6f1ce3d37fb4'
branch_labels = None
depends_on = None

SCAN_KINDS = "kind in ('parent', 'child', 'undo', 'close', 'load', 'unload', 'remove', 'reopen')"
OLD_SCAN_KINDS = "kind in ('parent', 'child', 'undo', 'close', 'load', 'unload')"


def upgrade():
    with op.batch_alter_table('bill', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_bill_status_valid'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_bill_closed_not_empty'), type_='check')
        batch_op.create_check_constraint('status_valid', "status in ('open', 'closed', 'cancelled')")
        batch_op.create_check_constraint('closed_not_empty', "status <> 'closed' or parent_count > 0")
        batch_op.create_check_constraint('cancelled_empty', "status <> 'cancelled' or parent_count = 0")
        batch_op.create_index('ix_bill_bill_no_prefix', ['bill_no'], unique=False, postgresql_ops={'bill_no': 'varchar_pattern_ops'})
    if op.get_bind().dialect.name == 'postgresql':
        op.create_index(
            'ix_bill_destination_words', 'bill', [sa.literal_column("to_tsvector('simple', destination)")],
            unique=False, postgresql_using='gin',
        )

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_target_id', ['target', 'id'], unique=False)

    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_scan_kind_valid'), type_='check')
        batch_op.create_check_constraint('kind_valid', SCAN_KINDS)
        batch_op.create_index('ix_scan_kind_id', ['kind', 'id'], unique=False)
        batch_op.create_index('ix_scan_reason_id', ['reason', 'id'], unique=False, postgresql_where=sa.text('reason is not null'), sqlite_where=sa.text('reason is not null'))
        batch_op.create_index('ix_scan_area_id_reason_id', ['area_id', 'reason', 'id'], unique=False, postgresql_where=sa.text('reason is not null'), sqlite_where=sa.text('reason is not null'))
        batch_op.create_index('ix_scan_rejected_id', ['id'], unique=False, postgresql_where=sa.text("outcome = 'rejected'"), sqlite_where=sa.text("outcome = 'rejected'"))
        batch_op.create_index('ix_scan_rejected_area_id_id', ['area_id', 'id'], unique=False, postgresql_where=sa.text("outcome = 'rejected'"), sqlite_where=sa.text("outcome = 'rejected'"))
        batch_op.drop_constraint(batch_op.f('fk_scan_bag_id_bag'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_scan_parent_id_bag'), type_='foreignkey')
        batch_op.create_foreign_key(batch_op.f('fk_scan_bag_id_bag'), 'bag', ['bag_id'], ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_scan_parent_id_bag'), 'bag', ['parent_id'], ['id'], ondelete='SET NULL')


def downgrade():
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_scan_parent_id_bag'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_scan_bag_id_bag'), type_='foreignkey')
        batch_op.create_foreign_key(batch_op.f('fk_scan_parent_id_bag'), 'bag', ['parent_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_scan_bag_id_bag'), 'bag', ['bag_id'], ['id'])
        batch_op.drop_index('ix_scan_rejected_area_id_id')
        batch_op.drop_index('ix_scan_rejected_id')
        batch_op.drop_index('ix_scan_area_id_reason_id')
        batch_op.drop_index('ix_scan_reason_id')
        batch_op.drop_index('ix_scan_kind_id')
        batch_op.drop_constraint(batch_op.f('ck_scan_kind_valid'), type_='check')
        batch_op.create_check_constraint('kind_valid', OLD_SCAN_KINDS)

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_target_id')

    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_bill_destination_words', table_name='bill')
    with op.batch_alter_table('bill', schema=None) as batch_op:
        batch_op.drop_index('ix_bill_bill_no_prefix', postgresql_ops={'bill_no': 'varchar_pattern_ops'})
        batch_op.drop_constraint(batch_op.f('ck_bill_cancelled_empty'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_bill_closed_not_empty'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_bill_status_valid'), type_='check')
        batch_op.create_check_constraint('status_valid', "status in ('open', 'closed')")
        batch_op.create_check_constraint('closed_not_empty', "status = 'open' or parent_count > 0")
