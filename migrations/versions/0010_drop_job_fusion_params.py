"""drop job.fusion_params, which nothing wrote or read

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 05:40:00

A job's fusion settings are its ``fuser`` and ``top_k`` columns, and the fuser's own
parameters live in its registry entry; ``fusion_params`` was created in 0001 and always
held ``{}``. The downgrade puts the column back as 0001 made it (not null, no server
default), filling existing rows with ``{}``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.drop_column('fusion_params')


def downgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('fusion_params', json, nullable=False,
                                   server_default=sa.text("'{}'")))
    with op.batch_alter_table('job') as batch:
        batch.alter_column('fusion_params', existing_type=json, existing_nullable=False,
                           server_default=None)
