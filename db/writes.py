"""Idempotent write paths: a redelivered task writes the same rows once."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel


def insert_ignore(
    session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]],
    returning: str | None = None,
) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING; returns ``returning`` of the rows actually inserted."""
    if not rows:
        return []
    table = model.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).on_conflict_do_nothing()
    if returning is None:
        session.execute(stmt, list(rows))
        return []
    # RETURNING with executemany is not portable; one statement per row is fine at the
    # sizes that ask for it (chunks, outbox rows).
    inserted = []
    for row in rows:
        value = session.execute(stmt.values(**row).returning(table.c[returning])).scalar()
        if value is not None:
            inserted.append(value)
    return inserted


def copy_insert_ignore(session: Session, model: type[SQLModel],
                       rows: Sequence[dict[str, Any]]) -> int:
    """Bulk idempotent insert; returns how many rows were new.

    PostgreSQL: COPY into a session-private temporary table, then one
    ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (COPY itself cannot skip conflicts, and a
    redelivered task must store nothing twice). DESIGN §4 measured 93k-131k rows/s this
    way against 69k for executemany; in 512-row batches, a transaction each, on a busy
    2-core machine: 50k against 38k. Other dialects (the embedded SQLite file) take the
    executemany path. Runs in the caller's transaction; every row needs the same keys.
    """
    if not rows:
        return 0
    table = model.__table__  # type: ignore[attr-defined]
    columns = list(rows[0])
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no columns {unknown}")
    if session.get_bind().dialect.name != "postgresql":
        result = session.execute(sqlite.insert(table).on_conflict_do_nothing(), list(rows))
        return int(result.rowcount)  # type: ignore[attr-defined]
    names = ", ".join(f'"{c}"' for c in columns)
    # One temporary table per target and column set, kept for the connection's life
    # (no catalog churn per batch); the TRUNCATE below empties it, and a rolled-back
    # transaction takes its COPY rows with it.
    temp = f"_copy_{table.name}_{zlib.crc32(','.join(columns).encode()):08x}"
    connection = session.connection()
    connection.exec_driver_sql(
        f'CREATE TEMPORARY TABLE IF NOT EXISTS "{temp}" AS '
        f'SELECT {names} FROM "{table.name}" WITH NO DATA')
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f'COPY "{temp}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])
    inserted = connection.exec_driver_sql(
        f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{temp}" '
        f"ON CONFLICT DO NOTHING")
    connection.exec_driver_sql(f'TRUNCATE "{temp}"')
    return int(inserted.rowcount)
