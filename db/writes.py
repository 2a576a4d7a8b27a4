"""Idempotent write paths: a redelivered task writes the same rows once."""

from __future__ import annotations

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
