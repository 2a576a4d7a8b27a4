"""candidate and comparison rows without foreign keys; a trigger deletes them with their
request

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 11:00:00

The generation and ranking workers write the two largest tables: three to twelve
candidates a request, and a comparison row for every ordered pair of them (132 million
rows for a million requests of 12 candidates). After 0011 dropped comparison's candidate
keys, the request keys' checks were the largest cost left in those writes: PostgreSQL
looked up and share-locked the request row for every row written, about a third of the
COPY (``ops/bench/storage.py`` writes the same rows into a copy of the table with the
keys). The workers write rows only for requests (and candidates) they have just read, so
the keys guarded nothing on insert; what they also did, removing a request's rows with it
(and so a job's, whose delete cascades to its requests), is now a trigger on ``request``,
which costs nothing when a row goes in. Rankings and fusions, one row a request, keep
their keys.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ('candidate', 'comparison')
_SQLITE_NAMES = {'fk': '%(table_name)s_%(column_0_name)s_fkey'}
_TRIGGER = 'request_deletes_stage_rows'

# PostgreSQL: once per statement, over the deleted rows (a job's cascade deletes its
# requests in one statement); both tables' unique indexes lead with request_id.
_PG_FUNCTION = f"""
CREATE FUNCTION {_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM comparison c USING gone WHERE c.request_id = gone.id;
  DELETE FROM candidate c USING gone WHERE c.request_id = gone.id;
  RETURN NULL;
END $$
"""
_PG_TRIGGER = f"""
CREATE TRIGGER {_TRIGGER} AFTER DELETE ON request REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT EXECUTE FUNCTION {_TRIGGER}()
"""
_SQLITE_TRIGGER = f"""
CREATE TRIGGER {_TRIGGER} AFTER DELETE ON request FOR EACH ROW
BEGIN
  DELETE FROM comparison WHERE request_id = OLD.id;
  DELETE FROM candidate WHERE request_id = OLD.id;
END
"""


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, naming_convention=_SQLITE_NAMES) as batch:
            batch.drop_constraint(f'{table}_request_id_fkey', type_='foreignkey')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"DROP TRIGGER {_TRIGGER} ON request")
        op.execute(f"DROP FUNCTION {_TRIGGER}()")
    else:
        op.execute(f"DROP TRIGGER {_TRIGGER}")
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(f'{table}_request_id_fkey', 'request', ['request_id'],
                                     ['id'], ondelete='CASCADE')
