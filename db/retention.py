"""Pruning the bookkeeping rows that only matter while a job runs.

Chord rows count a chunk's generate tasks; outbox rows carry messages until they are
published. Neither is part of the audit trail (candidates, comparisons, rankings,
fusions, labels are kept for good), but both grow with every chunk. Once older than any
job can run (a job expires after its completion window, 24 hours by default), they can go.
Failed outbox rows are kept: they explain why a chunk was abandoned. Expired sessions of
the auditor pages go too, whatever their age: a key's expired sessions are otherwise only
removed when that key signs in again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Delete, delete, func
from sqlmodel import Session, col, select

from db.models import ApiSession, Chord, ChordPart, Outbox, OutboxStatus, utcnow


@dataclass(frozen=True)
class Pruned:
    chords: int
    chord_parts: int
    outbox: int
    sessions: int


def prune(session: Session, before: datetime, *, dry_run: bool = False) -> Pruned:
    """Delete chords created and outbox rows sent or dropped before ``before``, and page
    sessions expired by now."""
    old_chords = select(Chord.group_id).where(col(Chord.created_at) < before)
    part_filter = col(ChordPart.group_id).in_(old_chords)
    chord_filter = col(Chord.created_at) < before
    outbox_filter = (col(Outbox.status).in_([OutboxStatus.SENT, OutboxStatus.DROPPED])
                     & (col(Outbox.created_at) < before))
    session_filter = col(ApiSession.expires_at) < utcnow()
    if dry_run:
        return Pruned(*(_count(session, model, where) for model, where in (
            (Chord, chord_filter), (ChordPart, part_filter), (Outbox, outbox_filter),
            (ApiSession, session_filter))))
    parts = _delete(session, delete(ChordPart).where(part_filter))
    chords = _delete(session, delete(Chord).where(chord_filter))
    outbox = _delete(session, delete(Outbox).where(outbox_filter))
    sessions = _delete(session, delete(ApiSession).where(session_filter))
    return Pruned(chords, parts, outbox, sessions)


def _delete(session: Session, statement: Delete) -> int:
    result: CursorResult[Any] = session.connection().execute(statement)
    return int(result.rowcount)


def _count(session: Session, model: type, where: ColumnElement[bool]) -> int:
    return int(session.exec(select(func.count()).select_from(model).where(where)).one())
