"""tenants, API keys and Batch API files

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:00:00

The HTTP API (manage.py serve) needs: tenants with their default job options, API keys
(only a SHA-256 hash of the secret is kept) with a role, and the files of the OpenAI Batch
API (uploaded inputs with their bytes; output and error files as rows whose content is
rendered from the stored results). Jobs already carry a tenant (``default`` for jobs
submitted from the command line).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('tenant',
    sa.Column('defaults', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('api_key',
    sa.Column('tenant', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('secret_hash', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.ForeignKeyConstraint(['tenant'], ['tenant.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key_id')
    )
    op.create_index(op.f('ix_api_key_tenant'), 'api_key', ['tenant'], unique=False)
    op.create_table('batch_file',
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('filename', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_batch_file_tenant'), 'batch_file', ['tenant'], unique=False)
    op.create_index(op.f('ix_batch_file_job_id'), 'batch_file', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_batch_file_job_id'), table_name='batch_file')
    op.drop_index(op.f('ix_batch_file_tenant'), table_name='batch_file')
    op.drop_table('batch_file')
    op.drop_index(op.f('ix_api_key_tenant'), table_name='api_key')
    op.drop_table('api_key')
    op.drop_table('tenant')
