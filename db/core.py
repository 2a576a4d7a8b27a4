"""Core tables of the models the stage workers touch on every chunk.

A statement on an ORM entity (``update(Chunk)``, ``select(Request.id)``) runs the ORM's
per-statement work: compile state, session synchronisation, ORM result rows. On the
hot path that was as much CPU as the statement itself (profiled: a one-row chunk update
spent 8% of a generator's time there). Statements written on these tables skip it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Table, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, SQLModel

from db.models import Candidate, Chunk, Comparison, Job, Outbox, Ranking, Request


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


candidate = _table(Candidate)
chunk = _table(Chunk)
comparison = _table(Comparison)
job = _table(Job)
outbox = _table(Outbox)
ranking = _table(Ranking)
request = _table(Request)


def among(session: Session, column: ColumnElement[Any], ids: Iterable[int]) -> ColumnElement[bool]:
    """``column`` is one of ``ids``: ``= ANY(array)`` on PostgreSQL, one parameter whatever
    the count. An ``IN`` list renders a new SQL text for every length, so neither the
    driver's query cache nor its prepared statements ever hit (a tenth of a fusion worker
    went to re-parsing such texts)."""
    values = list(ids)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("ids", values, type_=ARRAY(BigInteger), unique=True))
    return column.in_(values)
