"""rate buckets of the HTTP API

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 13:20:00

The request rate per API key was counted in each server process, so two server
processes allowed twice the rate. The bucket now lives in this table (db/rate_limits.py),
one row per key that has made a request, removed with its key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_rate_bucket',
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['api_key.key_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key_id')
    )


def downgrade() -> None:
    op.drop_table('api_rate_bucket')
