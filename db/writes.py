"""Idempotent write paths: a redelivered task writes the same rows once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Float, String, Table, literal_column, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlmodel import Session, SQLModel


def insert_ignore(
    session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]],
    returning: str | None = None,
) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING; returns ``returning`` of the rows actually inserted.

    Several rows without ``returning`` (the generation worker's candidates) go through
    :func:`copy_insert_ignore`: one COPY on PostgreSQL.
    """
    if not rows:
        return []
    table = model.__table__  # type: ignore[attr-defined]
    if returning is None and len(rows) > 1:
        copy_insert_ignore(session, model, rows)
        return []
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).on_conflict_do_nothing()
    if returning is None:
        session.execute(stmt, list(rows))
        return []
    # RETURNING with executemany is not portable; one statement per row is fine at the
    # sizes that ask for it (chunks, outbox rows).
    inserted = []
    with_returning = stmt.returning(table.c[returning])
    for row in rows:
        # Values as parameters, not .values(**row): one statement object for all rows.
        value = session.execute(with_returning, dict(row)).scalar()
        if value is not None:
            inserted.append(value)
    return inserted


def bulk_insert_ignore(session: Session, model: type[SQLModel] | Table,
                       rows: Sequence[dict[str, Any]], *, wait_for_flush: bool = True) -> int:
    """Bulk idempotent insert in the caller's transaction; returns how many rows were new
    (fewer than ``len(rows)`` means some were stored already; those keep their values).

    PostgreSQL: one statement, ``INSERT … SELECT * FROM unnest(%b::T[], …) ON CONFLICT DO
    NOTHING``, each column sent as one binary array. Its text is fixed per table and
    column set, so psycopg prepares it on a connection's fifth use: a batch costs one round
    trip, no per-row parsing and no catalog work. The COPY into a temporary table it
    replaces took four statements (create if missing, COPY, INSERT … SELECT, TRUNCATE) and
    TRUNCATE gave the temporary table a new file each time; ops/bench/storage.py measures
    both against ORM inserts.

    Stores what SQLAlchemy's ``insert`` would: a column the rows leave out gets its
    server default, and where it has a Python-side default instead, or a column mixes value
    types psycopg cannot put in one array (ints among floats are made floats), the batch
    takes SQLAlchemy's executemany. Every row needs the same keys, and text may not hold
    NUL (PostgreSQL refuses it): both errors name the row and the column. Other dialects
    (the embedded SQLite file) take executemany too.

    ``wait_for_flush=False`` sets ``synchronous_commit = off`` for the caller's transaction
    only: its COMMIT returns before the WAL reaches disk (a PostgreSQL crash can lose the
    last ~0.6 s of such commits; the database stays consistent). Meant for the ranking
    worker's comparison batches: they are recomputable, written idempotently, and the
    task's later ranking commit (synchronous, before anything is published or acked)
    flushes the WAL up to and past them. Not for a transaction that anything outside the
    database acts on.
    """
    if not rows:
        return 0
    table: Table = model if isinstance(model, Table) else model.__table__  # type: ignore[attr-defined]
    columns = _columns(table, rows)
    session.flush()  # pending ORM rows (a parent this batch points at) go first
    dialect = session.get_bind().dialect
    plan = _plan(table, columns, dialect) if dialect.name == "postgresql" else None
    arrays = None if plan is None else _arrays(table, plan.columns, rows)
    if plan is None:
        result = session.execute(sqlite.insert(table).on_conflict_do_nothing(), list(rows))
        return int(result.rowcount)  # type: ignore[attr-defined]
    if arrays is None or plan.python_defaults:
        if not wait_for_flush:
            session.connection().exec_driver_sql(_NO_FLUSH_WAIT)
        # psycopg's executemany reports no rowcount; a row returned is a row inserted.
        insert = postgresql.insert(table).on_conflict_do_nothing()
        return len(session.execute(insert.returning(literal_column("1")), list(rows)).all())
    raw = session.connection().connection.driver_connection
    assert raw is not None
    if not wait_for_flush:
        # The setting and the insert in one round trip.
        with raw.pipeline(), raw.cursor() as cursor:
            cursor.execute(_NO_FLUSH_WAIT)
            cursor.execute(plan.statement, arrays)
        return int(cursor.rowcount)
    with raw.cursor() as cursor:
        cursor.execute(plan.statement, arrays)
        return int(cursor.rowcount)


def copy_insert_ignore(session: Session, model: type[SQLModel] | Table,
                       rows: Sequence[dict[str, Any]], *, wait_for_flush: bool = True) -> int:
    """:func:`bulk_insert_ignore` through a binary ``COPY`` where no row is stored yet.

    COPY fills heap pages many rows at a time; an ``INSERT … ON CONFLICT`` inserts row by
    row, each first probing the unique index. So the batch goes in by COPY under a
    savepoint, and only when a row is stored already (a redelivered task: the COPY fails on
    the unique constraint, and the savepoint undoes it) does it take
    :func:`bulk_insert_ignore`, which keeps the stored rows and counts the new ones. Same
    contract and errors as :func:`bulk_insert_ignore`; tables with a column only SQLAlchemy
    fills, and other dialects, take that path directly.
    """
    if not rows:
        return 0
    table: Table = model if isinstance(model, Table) else model.__table__  # type: ignore[attr-defined]
    columns = _columns(table, rows)
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql" or _plan(table, columns, dialect).python_defaults:
        return bulk_insert_ignore(session, model, rows, wait_for_flush=wait_for_flush)
    for column in _plan(table, columns, dialect).columns:
        if column.text:
            _refuse_nul(table.name, column.name, [row[column.name] for row in rows])
    session.flush()
    raw = session.connection().connection.driver_connection
    assert raw is not None
    copy_plan = _copy_plan(raw, table, columns, dialect)
    setup = "" if wait_for_flush else f"{_NO_FLUSH_WAIT}; "
    with raw.cursor() as cursor:
        cursor.execute(f"{setup}SAVEPOINT {_SAVEPOINT}")
        try:
            with cursor.copy(copy_plan.statement) as copy:
                copy.set_types(copy_plan.types)
                for row in rows:
                    copy.write_row([row[name] for name in columns])
        except psycopg.errors.UniqueViolation:
            cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
            return bulk_insert_ignore(session, model, rows, wait_for_flush=wait_for_flush)
        cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return len(rows)


@dataclass(frozen=True)
class _Column:
    name: str
    process: Callable[[Any], Any] | None  # SQLAlchemy's bind processor (JSON wraps values)
    text: bool
    floating: bool


@dataclass(frozen=True)
class _Plan:
    statement: str
    columns: tuple[_Column, ...]
    python_defaults: bool  # a column left out has a default only SQLAlchemy applies


@dataclass(frozen=True)
class _CopyPlan:
    statement: str
    types: tuple[int, ...]  # the columns' type OIDs: COPY's binary format needs them


_NO_FLUSH_WAIT = "SET LOCAL synchronous_commit = off"
_SAVEPOINT = "blendq_copy"
_plans: dict[tuple[Table, tuple[str, ...], str], _Plan] = {}
_copy_plans: dict[tuple[Table, tuple[str, ...]], _CopyPlan] = {}


def _columns(table: Table, rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    columns = tuple(rows[0])
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no columns {unknown}")
    keys = rows[0].keys()
    for index, row in enumerate(rows):
        if row.keys() != keys:
            raise ValueError(f"{table.name} row {index} has columns {sorted(row)}, "
                             f"row 0 has {sorted(keys)}: a batch needs the same ones")
    return columns


def _plan(table: Table, columns: tuple[str, ...], dialect: Dialect) -> _Plan:
    """The statement and per-column conversions, built once per table and column set."""
    key = (table, columns, dialect.name)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    quote = dialect.identifier_preparer.quote
    casts, specs = _array_columns(table, columns, dialect)
    left_out = [c for c in table.c if c.name not in columns]
    plan = _Plan(
        statement=(f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
                   f"({', '.join(quote(c) for c in columns)}) "
                   f"SELECT * FROM unnest({', '.join(casts)}) ON CONFLICT DO NOTHING"),
        columns=specs,
        python_defaults=any(c.default is not None for c in left_out))
    _plans[key] = plan
    return plan


def _array_columns(table: Table, columns: tuple[str, ...],
                   dialect: Dialect) -> tuple[list[str], tuple[_Column, ...]]:
    """Each column as a binary array parameter cast to its own type, and how to convert it."""
    casts, specs = [], []
    for name in columns:
        column_type = table.c[name].type
        # Arrays of the column's own type (VARCHAR(128), JSONB, TIMESTAMP WITH TIME ZONE,
        # ...): PostgreSQL checks lengths and values exactly as a plain statement would.
        casts.append(f"%b::{column_type.compile(dialect=dialect)}[]")
        specs.append(_Column(name, column_type.dialect_impl(dialect).bind_processor(dialect),
                             _is(column_type, String), _is(column_type, Float)))
    return casts, tuple(specs)


def bulk_update(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]],
                key: str = "id") -> None:
    """Set columns of many rows, each ``{key: ..., column: value, ...}``, in the caller's
    transaction.

    PostgreSQL: one ``UPDATE … FROM unnest(…)`` with each column sent as one binary array,
    where an executemany costs a statement per row (a chunk's 64 request updates were 64
    executions). Every row needs the same keys; text may not hold NUL. Other dialects, or
    values psycopg cannot put in one array, take SQLAlchemy's bulk update by primary key.
    """
    if not rows:
        return
    table: Table = model.__table__  # type: ignore[attr-defined]
    columns = _columns(table, rows)
    if key not in columns or len(columns) < 2:
        raise ValueError(f"{table.name} update rows need {key!r} and a column to set")
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        session.execute(update(model), list(rows))
        return
    casts, specs = _array_columns(table, columns, dialect)
    arrays = _arrays(table, specs, rows)
    if arrays is None:
        session.execute(update(model), list(rows))
        return
    quote = dialect.identifier_preparer.quote
    name = dialect.identifier_preparer.format_table(table)
    statement = (f"UPDATE {name} SET "
                 + ", ".join(f"{quote(c)} = v.{quote(c)}" for c in columns if c != key)
                 + f" FROM unnest({', '.join(casts)}) AS v({', '.join(map(quote, columns))})"
                 + f" WHERE {name}.{quote(key)} = v.{quote(key)}")
    session.flush()
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        cursor.execute(statement, arrays)


def _copy_plan(raw: psycopg.Connection[Any], table: Table, columns: tuple[str, ...],
               dialect: Dialect) -> _CopyPlan:
    key = (table, columns)
    plan = _copy_plans.get(key)
    if plan is not None:
        return plan
    name = dialect.identifier_preparer.format_table(table)
    oids = dict(raw.execute(
        "SELECT attname, atttypid::int FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [name]).fetchall())
    quote = dialect.identifier_preparer.quote
    plan = _CopyPlan(
        statement=(f"COPY {name} ({', '.join(quote(c) for c in columns)}) "
                   "FROM STDIN (FORMAT BINARY)"),
        types=tuple(int(oids[c]) for c in columns))
    _copy_plans[key] = plan
    return plan


def _is(column_type: Any, kind: type) -> bool:
    # SQLModel's AutoString is a TypeDecorator over String: look through to what it wraps.
    return isinstance(column_type, kind) or isinstance(getattr(column_type, "impl", None), kind)


def _arrays(table: Table, columns: tuple[_Column, ...],
            rows: Sequence[dict[str, Any]]) -> list[list[Any]] | None:
    """One list per column, as psycopg sends arrays; None where a column mixes types."""
    arrays: list[list[Any]] | None = []
    for column in columns:
        values = [row[column.name] for row in rows]
        if column.text:
            _refuse_nul(table.name, column.name, values)
        kinds = set(map(type, values))
        kinds.discard(type(None))
        if len(kinds) > 1 and not all(issubclass(k, str) for k in kinds):  # StrEnum is str
            if not (column.floating and kinds <= {int, float}):
                arrays = None  # still check the other columns' text
                continue
            values = [v if v is None else float(v) for v in values]
        if column.process is not None:
            values = [column.process(v) for v in values]
        if arrays is not None:
            arrays.append(values)
    return arrays


def _refuse_nul(table: str, column: str, values: list[Any]) -> None:
    # One scan of the joined column; only a hit looks for the row to name.
    if "\x00" not in "".join(v for v in values if isinstance(v, str)):
        return
    index = next(i for i, v in enumerate(values) if isinstance(v, str) and "\x00" in v)
    raise ValueError(f"{table} row {index}: {column} contains a NUL character, which "
                     "PostgreSQL text cannot hold")
