"""A Celery result backend that counts chord parts in Postgres.

Why: the database backend completes chords by polling (``chord_unlock``) and counting
backends double-count a header task that is delivered twice. Here each finished header
task inserts one row keyed by (group id, task id), so a redelivery counts once. Parts of
one chord are serialised on the chord's row lock, so two parts finishing together cannot
both miss the last count. The part that completes the count writes the chord body to the
outbox under a unique key, in the same transaction: the body is queued exactly once and a
crash right after cannot lose it. It is then published at once, or by the dispatcher.

Celery tells the size through ``set_chord_size`` just before it publishes the last header
task, so the part that completes the count always finds it.

Task results are not stored: every stage writes its output to its own tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy.exc
import structlog
from celery import states
from celery.backends.base import BaseBackend
from sqlalchemy import DateTime, bindparam, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from db.engine import is_postgres, session_scope
from db.models import Chord, ChordPart, ChunkStage, utcnow
from db.writes import insert_ignore
from orchestration import lifecycle, outbox
from orchestration.canvas import to_payload

log = structlog.get_logger(__name__)


def set_size(session: Session, group_id: str, size: int) -> None:
    stmt = _insert_for(session)(Chord).values(group_id=group_id, size=size, created_at=utcnow())
    session.execute(stmt.on_conflict_do_update(index_elements=["group_id"],
                                               set_={"size": size}))


def record_part(session: Session, group_id: str, task_id: str, state: str,
                body: dict[str, Any], job_id: str | None = None,
                size_hint: int | None = None, chunk_id: int | None = None,
                start_timeout: int = lifecycle.DEFAULT_START_TIMEOUT) -> int | None:
    """Count one header task; returns the outbox id when this part completed the chord.

    Two statements on PostgreSQL, in this order: the chord's row is locked first (created
    if the size is not known yet), then the part is inserted and the parts counted. The
    count is a statement of its own, so its snapshot is taken once the lock is held: the
    last part of a chord to get the lock sees every other part committed.
    """
    now = utcnow()
    size = session.execute(_LOCK_CHORD, {"group_id": group_id, "size": size_hint,
                                         "created_at": now}).scalar_one()
    if size is None:
        insert_ignore(session, ChordPart, [{"group_id": group_id, "task_id": task_id,
                                            "state": state, "created_at": now}])
        return None
    if _count_parts(session, group_id, task_id, state, now) < size:
        return None
    # The chunk is kept so the ranking worker can see which chunks wait on its queue.
    # Published right after the commit (on_chord_part_return), so no wake-up.
    outbox_id = outbox.add(session, outbox.KIND_SIGNATURE, body, job_id=job_id,
                           chunk_id=chunk_id, dedup_key=f"chord:{group_id}", notify=False)
    if outbox_id is not None and chunk_id is not None:
        lifecycle.enter_stage(session, chunk_id, ChunkStage.RANK, start_timeout)
    return outbox_id


_LOCK_CHORD = text("""
INSERT INTO chord (group_id, size, created_at) VALUES (:group_id, :size, :created_at)
ON CONFLICT (group_id) DO UPDATE SET size = coalesce(chord.size, excluded.size)
RETURNING size
""").bindparams(bindparam("created_at", type_=DateTime(timezone=True)))
"""The chord's row, created if no part or size came first, and locked (the update takes
the row lock even when nothing changes); SQL text, built once, on the hot path."""

_COUNT_WITH_PART = text("""
WITH new_part AS (
    INSERT INTO chord_part (group_id, task_id, state, created_at)
    VALUES (:group_id, :task_id, :state, :created_at)
    ON CONFLICT DO NOTHING RETURNING 1)
SELECT (SELECT count(*) FROM chord_part WHERE group_id = :group_id)
     + (SELECT count(*) FROM new_part)
""").bindparams(bindparam("created_at", type_=DateTime(timezone=True)))
"""The part inserted and the parts counted in one round trip: the scan does not see the
row its own statement inserts, so that row is added from the insert's RETURNING."""


def _count_parts(session: Session, group_id: str, task_id: str, state: str,
                 now: datetime) -> int:
    params = {"group_id": group_id, "task_id": task_id, "state": state, "created_at": now}
    if is_postgres(session):
        return int(session.execute(_COUNT_WITH_PART, params).scalar_one())
    insert_ignore(session, ChordPart, [params])
    return int(session.execute(select(func.count()).select_from(ChordPart)
                               .where(ChordPart.group_id == group_id)).scalar_one())


def _insert_for(session: Session) -> Any:
    return postgresql.insert if is_postgres(session) else sqlite.insert


def _with_retries(action: Callable[[], int | None], attempts: int = 8,
                  first_wait: float = 0.5) -> int | None:
    """Run ``action``, waiting out a database restart.

    The part is counted after the task's work is stored and before its message is acked;
    if counting failed for good, Celery would ack a task whose chord never completes.
    Waits double from ``first_wait`` up to 30 s (about a minute in all by default).
    """
    wait = first_wait
    for attempt in range(attempts):
        try:
            return action()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            if attempt == attempts - 1:
                raise
            log.warning("chord.count_retry", error=str(exc).splitlines()[0], wait=wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
    return None


# Parts that their task counted in its own last transaction (OwnPart), by task id, with
# the outbox row of the body when that part completed the chord: Celery's call after the
# task (on_chord_part_return) then only publishes it.
_counted_by_task: dict[str, tuple[int, dict[str, Any]] | None] = {}
_counted_lock = threading.Lock()


@dataclass(frozen=True)
class _Part:
    group_id: str
    task_id: str
    payload: dict[str, Any]
    job_id: str | None
    chunk_id: int | None
    size_hint: int | None


def _part_of(app: Any, request: Any) -> _Part | None:
    """What a header task's request says of its chord; None outside a chord."""
    group_id, body = request.group, request.chord
    if not group_id or not body:
        return None
    kwargs = request.kwargs or {}
    return _Part(group_id=group_id, task_id=request.id,
                 payload=to_payload(app.signature(body)), job_id=kwargs.get("job_id"),
                 chunk_id=kwargs.get("chunk_id"),
                 size_hint=body.get("chord_size") if isinstance(body, dict) else None)


def _record(session: Session, part: _Part, state: str, start_timeout: int) -> int | None:
    return record_part(session, part.group_id, part.task_id, state, part.payload,
                       job_id=part.job_id, size_hint=part.size_hint, chunk_id=part.chunk_id,
                       start_timeout=start_timeout)


class OwnPart:
    """A header task's chord part, counted in the task's own last transaction instead of
    one of its own after the task: a generate message whose chunk another task gathered
    ends in one transaction. Only for a task about to succeed: count in the transaction,
    then call :meth:`committed` once it has committed."""

    def __init__(self, app: Any, request: Any, start_timeout: int) -> None:
        self._part = _part_of(app, request)
        self._start_timeout = start_timeout
        self._outbox_id: int | None = None

    def count(self, session: Session) -> None:
        if self._part is not None:
            self._outbox_id = _record(session, self._part, states.SUCCESS,
                                      self._start_timeout)

    def committed(self) -> None:
        if self._part is None:
            return
        done = None if self._outbox_id is None else (self._outbox_id, self._part.payload)
        with _counted_lock:
            _counted_by_task[self._part.task_id] = done


class PostgresChordBackend(BaseBackend):
    supports_native_join = False

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    def _url(self) -> str:
        return str(self.app.conf.blendq_settings.database_url)

    # -- results: not kept -------------------------------------------------------------
    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        return result

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return {"status": states.PENDING, "result": None}

    def _forget(self, task_id: str) -> None:
        return None

    def cleanup(self) -> None:
        return None

    # -- chords ------------------------------------------------------------------------
    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        # Nothing to poll for: parts are counted as they return.
        return None

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        with session_scope(self._url()) as session:
            set_size(session, group_id, chord_size)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        with _counted_lock:
            counted = request.id in _counted_by_task
            done = _counted_by_task.pop(request.id, None)
        if not counted:
            part = _part_of(self.app, request)
            if part is None:
                return
            start_timeout = self.app.conf.blendq_settings.chunk_start_timeout

            def count() -> int | None:
                with session_scope(self._url()) as session:
                    return _record(session, part, state, start_timeout)

            outbox_id = _with_retries(count)
            done = None if outbox_id is None else (outbox_id, part.payload)
        if done is None:
            return
        log.info("chord.complete", group_id=request.group, outbox_id=done[0])
        # Queued already; if this publish fails, the dispatcher sends it.
        outbox.publish_now(self._url(), self.app, [done],
                           self.app.conf.blendq_settings.chunk_start_timeout)
