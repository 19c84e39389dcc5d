"""Index of each area's parent bags, newest first

The bag list filtered to parents in one area (a dispatcher's "kind=parent",
or a biller's area and kind filters) otherwise walks the area's children too:
thirty of them for every parent shown.

Revision ID: f6b8d07b7126
Revises: dbbbb5715891
Create Date: 2026-11-28 19:07:05.189980

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f6b8d07b7126'
down_revision = 'dbbbb5715891'
branch_labels = None
depends_on = None

PARENTS_ONLY = sa.text("kind = 'parent'")


def upgrade():
    with op.batch_alter_table('bag', schema=None) as batch_op:
        batch_op.create_index(
            'ix_bag_area_id_id_parents', ['area_id', 'id'], unique=False,
            postgresql_where=PARENTS_ONLY, sqlite_where=PARENTS_ONLY,
        )


def downgrade():
    with op.batch_alter_table('bag', schema=None) as batch_op:
        batch_op.drop_index('ix_bag_area_id_id_parents')
