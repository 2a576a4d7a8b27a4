"""Core tables of the models the stage workers touch on every chunk.

A statement on an ORM entity (``update(Chunk)``, ``select(Request.id)``) runs the ORM's
per-statement work: compile state, session synchronisation, ORM result rows. On the
hot path that was as much CPU as the statement itself (profiled: a one-row chunk update
spent 8% of a generator's time there). Statements written on these tables skip it.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

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
