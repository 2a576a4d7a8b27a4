"""server-side sessions of the auditor pages, failed key attempts per address, the
API's shared secrets, and the caller's metadata of a request

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 02:20:00

The pages' cookie held the raw API key and the API accepted it. A browser now signs in to a
session: its cookie holds a random token whose hash is stored here with an expiry, removed
at sign-out and with its key; the API takes only the Authorization header. Failed key
attempts count per client address in a token bucket. ``api_secret`` keeps the key that
turns request ids into the opaque ids the API shows (ops/api/public_ids.py). A native line's
own ``metadata`` is kept on its request and given back on its result line.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_session',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['api_key.key_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash')
    )
    op.create_index(op.f('ix_api_session_key_id'), 'api_session', ['key_id'], unique=False)
    op.create_table('api_address_bucket',
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('address')
    )
    op.create_index(op.f('ix_api_address_bucket_updated_at'), 'api_address_bucket',
                    ['updated_at'], unique=False)
    op.create_table('api_secret',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.add_column('request', sa.Column(
        'metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                           'postgresql'), nullable=True))


def downgrade() -> None:
    op.drop_column('request', 'metadata')
    op.drop_table('api_secret')
    op.drop_index(op.f('ix_api_address_bucket_updated_at'), table_name='api_address_bucket')
    op.drop_table('api_address_bucket')
    op.drop_index(op.f('ix_api_session_key_id'), table_name='api_session')
    op.drop_table('api_session')
