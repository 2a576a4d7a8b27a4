"""indexes for gathering chunks that wait on the rank queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:30:00

The ranking worker ranks, with its own chunk, further chunks whose generation is done
and whose rank message waits (their chord body is in the outbox): it looks up running
chunks and the outbox rows of a chunk, both of which grow with every job.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f('ix_chunk_status'), 'chunk', ['status'], unique=False)
    op.create_index(op.f('ix_outbox_chunk_id'), 'outbox', ['chunk_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_outbox_chunk_id'), table_name='outbox')
    op.drop_index(op.f('ix_chunk_status'), table_name='chunk')
