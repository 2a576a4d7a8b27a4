"""idempotency keys of the HTTP API

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 12:00:00

Every create of the HTTP API honours an ``Idempotency-Key`` header: the same key from the
same tenant returns the first object. Jobs and batches keep their key on the job row
(``uq_job_tenant_idempotency_key``); uploaded files and auditors' labels have no such
column, so this table remembers, per tenant and kind of object, which key made which
object. Its primary key decides a race between two requests with the same key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_idempotency_key',
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.PrimaryKeyConstraint('tenant', 'scope', 'key')
    )


def downgrade() -> None:
    op.drop_table('api_idempotency_key')
