"""The model registry's rows (``registered_model``): read, register, remove.

Validation of names, roles and backends lives in orchestration/registry.py, which builds
the typed registry from these rows; this module only stores what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, text, update
from sqlmodel import Session, col, select

from db.models import TERMINAL_JOB_STATUSES, Job, RegisteredModel, utcnow

TABLE = RegisteredModel.__tablename__


@dataclass(frozen=True)
class ModelRow:
    """One registry entry as stored, detached from any session."""

    name: str
    role: str
    backend: str
    path: str
    revision: str
    queue: str
    params: dict[str, Any]
    is_default: bool
    paused: bool


def has_registry_table(session: Session) -> bool:
    """False on a database not yet migrated (the embedded run reads its registry before
    it upgrades its SQLite file)."""
    return inspect(session.connection()).has_table(TABLE)


def registered_models(session: Session) -> list[ModelRow]:
    rows = session.exec(select(RegisteredModel).order_by(col(RegisteredModel.name))).all()
    return [_detached(r) for r in rows]


def upsert_model(session: Session, row: ModelRow) -> bool:
    """Insert or replace ``row`` (its pause flag is kept when it exists: pausing is an
    admin's run-time decision, not part of a registration). A new default clears the
    role's previous one. Returns whether the entry is new."""
    # Serialises registrations, so two concurrent ``--default`` leave one default.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('blendq.registry'))"))
    if row.is_default:
        session.exec(update(RegisteredModel)
                     .where(col(RegisteredModel.role) == row.role,
                            col(RegisteredModel.name) != row.name)
                     .values(is_default=False, updated_at=utcnow()))
    stored = session.get(RegisteredModel, row.name)
    created = stored is None
    if stored is None:
        stored = RegisteredModel(name=row.name, role=row.role, backend=row.backend,
                                 path=row.path, queue=row.queue, paused=row.paused)
    stored.role, stored.backend, stored.path = row.role, row.backend, row.path
    stored.revision, stored.queue, stored.params = row.revision, row.queue, dict(row.params)
    stored.is_default = row.is_default
    stored.updated_at = utcnow()
    session.add(stored)
    session.flush()
    return created


def remove_model(session: Session, name: str) -> bool:
    stored = session.get(RegisteredModel, name)
    if stored is None:
        return False
    session.delete(stored)
    session.flush()
    return True


def open_jobs_using(session: Session, name: str) -> list[str]:
    """Ids of jobs not yet ended that name ``name`` as a generator, ranker or fuser: their
    remaining tasks would fail with "unknown model" if it were removed now."""
    rows = session.exec(select(Job.id, Job.models, Job.ranker, Job.fuser)
                        .where(col(Job.status).not_in(TERMINAL_JOB_STATUSES))).all()
    return sorted(job_id for job_id, models, ranker, fuser in rows
                  if name in (models or []) or name in (ranker, fuser))


def _detached(r: RegisteredModel) -> ModelRow:
    return ModelRow(name=r.name, role=r.role, backend=r.backend, path=r.path,
                    revision=r.revision, queue=r.queue, params=dict(r.params or {}),
                    is_default=r.is_default, paused=r.paused)
