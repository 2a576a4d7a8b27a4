"""chunk leases, stages and job counters

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 02:20:00

A job had to end whatever happened to its messages, and did not when one was lost (a
purged queue, a dead letter). Each active chunk now records which stage it waits on or is
in, and a lease: a worker on it renews it, a published message gets a start bound, and the
dispatcher's sweeper re-publishes a chunk whose lease lapsed (``sweeps`` bounds how often,
``epoch`` keys the new outbox rows). Job counts were recomputed over the whole job at every
chunk's end; ``chunks_left`` lets a chunk's end move them by its own requests only.
Existing rows: chunks_left is the job's active chunks; active chunks get a lease from now.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('chunk', sa.Column('stage', sa.String(length=16), nullable=False,
                                     server_default='generate'))
    op.add_column('chunk', sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
    op.add_column('chunk', sa.Column('sweeps', sa.Integer(), nullable=False,
                                     server_default='0'))
    op.add_column('chunk', sa.Column('epoch', sa.Integer(), nullable=False,
                                     server_default='0'))
    op.create_index(op.f('ix_chunk_lease_until'), 'chunk', ['lease_until'], unique=False)
    op.add_column('job', sa.Column('chunks_left', sa.Integer(), nullable=False,
                                   server_default='0'))
    op.execute("""
        UPDATE job SET chunks_left = (
            SELECT count(*) FROM chunk WHERE chunk.job_id = job.id
            AND chunk.status IN ('pending', 'dispatched', 'running'))
    """)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE chunk SET lease_until = now() + interval '10 minutes' "
                   "WHERE status IN ('dispatched', 'running')")
    for table, column in (('chunk', 'stage'), ('chunk', 'sweeps'), ('chunk', 'epoch'),
                          ('job', 'chunks_left')):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, server_default=None)


def downgrade() -> None:
    op.drop_column('job', 'chunks_left')
    op.drop_index(op.f('ix_chunk_lease_until'), table_name='chunk')
    op.drop_column('chunk', 'epoch')
    op.drop_column('chunk', 'sweeps')
    op.drop_column('chunk', 'lease_until')
    op.drop_column('chunk', 'stage')
