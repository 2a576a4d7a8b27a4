"""comparison rows keep their request's foreign key only

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 06:00:00

A ranker writes a comparison row for every ordered pair of a request's candidates (132
million rows for a million requests of 12), and PostgreSQL checked each row's two
candidate keys with a locking lookup into ``candidate``, which cost about a third of the
write (``ops/bench/storage.py``). The ranking worker reads those candidates in the same
task that stores the row, and ``request_id`` keeps its foreign key: deleting a request
(or its job) still takes its comparisons with it. The one other place that deletes
candidates, ``jobs retry`` (failed candidates, which no ranker compared), deletes their
comparisons itself.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = (('comparison_candidate_a_id_fkey', 'candidate_a_id'),
         ('comparison_candidate_b_id_fkey', 'candidate_b_id'))
# SQLite's foreign keys have no names; batch mode names them this way to drop them.
_SQLITE_NAMES = {'fk': '%(table_name)s_%(column_0_name)s_fkey'}


def upgrade() -> None:
    with op.batch_alter_table('comparison', naming_convention=_SQLITE_NAMES) as batch:
        for name, _ in _KEYS:
            batch.drop_constraint(name, type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('comparison') as batch:
        for name, column in _KEYS:
            batch.create_foreign_key(name, 'candidate', [column], ['id'], ondelete='CASCADE')
