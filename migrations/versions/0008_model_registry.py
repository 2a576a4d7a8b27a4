"""model registry in PostgreSQL

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 02:20:00

The registry was a TOML file every host had to read; ``registered_model`` held only a copy
of it (for pause flags). It is now the registry itself (``manage.py models register``), so
a worker host needs only the database and broker URLs and its weights. A default ranker or
fuser (the one a job gets when it names none) was a TOML field; it becomes a column.
Existing rows were copies of a registry file without that flag: none is a default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('registered_model', sa.Column('is_default', sa.Boolean(), nullable=False,
                                                server_default=sa.false()))
    with op.batch_alter_table('registered_model') as batch:
        batch.alter_column('is_default', server_default=None)


def downgrade() -> None:
    op.drop_column('registered_model', 'is_default')
