"""The transactional outbox and its relay to RabbitMQ.

Rows are written in the transaction that creates what they refer to; the relay claims them
with ``FOR UPDATE SKIP LOCKED`` (so several dispatchers share the work), publishes with
broker confirms and marks them sent in the same transaction. A crash between publish and
commit publishes the row again: delivery is at least once, and every task is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import kombu.exceptions
import structlog
from celery import Celery
from sqlalchemy import select as select_rows
from sqlalchemy import text, update
from sqlmodel import Session, select

from db import core
from db.clock import database_now
from db.engine import is_postgres, session_scope
from db.models import (
    ChunkStage,
    ChunkStatus,
    JobStatus,
    Outbox,
    OutboxStatus,
    utcnow,
)
from db.writes import insert_ignore
from orchestration import lifecycle
from orchestration.canvas import from_payload

NOTIFY_CHANNEL = "blendq_outbox"
KIND_CANVAS = "canvas"  # a chunk's whole canvas, dropped if its job was cancelled first
KIND_SIGNATURE = "signature"  # a chord body or any other signature, always published

# A row that fails this often for a reason other than the broker being away is given up.
MAX_ATTEMPTS = 10
BROKER_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError, OSError, kombu.exceptions.OperationalError)

log = structlog.get_logger(__name__)
def add(session: Session, kind: str, payload: dict[str, Any], *, job_id: str | None = None,
        chunk_id: int | None = None, dedup_key: str | None = None,
        notify: bool = True) -> int | None:
    """Queue a message; with a ``dedup_key`` a second add is a no-op and returns None.

    ``notify=False`` for a row its writer publishes itself right after committing
    (:func:`publish_now`): waking the dispatcher would only have it race for the row. If
    that publish fails, the dispatcher's next poll sends it.
    """
    row = _pending_row(kind, Queued(payload, job_id, chunk_id, dedup_key), utcnow())
    ids = insert_ignore(session, Outbox, [row], returning="id")
    if ids and notify and is_postgres(session):
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return ids[0] if ids else None


class PendingRow(NamedTuple):
    """An outbox row as the relay reads it: a plain row, not an ORM object."""

    id: int
    kind: str
    payload: dict[str, Any]
    job_id: str | None
    chunk_id: int | None


Publisher = Callable[[PendingRow], None]


class Queued(NamedTuple):
    """A message for :func:`add_many`."""

    payload: dict[str, Any]
    job_id: str | None = None
    chunk_id: int | None = None
    dedup_key: str | None = None


def add_many(session: Session, kind: str, messages: list[Queued]) -> None:
    """Queue several messages in one statement (a COPY on PostgreSQL, see
    db/writes.py) and wake the dispatcher once; as with :func:`add`, a message whose dedup
    key is taken is skipped."""
    if not messages:
        return
    now = utcnow()
    insert_ignore(session, Outbox, [_pending_row(kind, m, now) for m in messages])
    if is_postgres(session):
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


def _pending_row(kind: str, message: Queued, now: datetime) -> dict[str, Any]:
    return {"kind": kind, "payload": message.payload, "job_id": message.job_id,
            "chunk_id": message.chunk_id, "dedup_key": message.dedup_key,
            "status": OutboxStatus.PENDING, "attempts": 0, "created_at": now}


def celery_publisher(app: Celery) -> Publisher:
    def publish(row: PendingRow) -> None:
        from_payload(app, row.payload).apply_async()

    return publish


def relay(session: Session, publish: Publisher, *, limit: int = 100,
          only_id: int | None = None,
          start_timeout: int = lifecycle.DEFAULT_START_TIMEOUT) -> int:
    """Publish up to ``limit`` pending rows; returns how many left the pending state.

    A failed publish is recorded on its row (attempts, last_error) and never raised, so the
    caller's transaction keeps what was sent before it. When the broker is unreachable the
    batch stops there; any other failure (a row that cannot be published) skips that row,
    and after MAX_ATTEMPTS the row is given up and its chunk's requests fail with the reason.
    The batch is read in one statement and marked in one per outcome.
    """
    o = core.outbox.c
    query = select_rows(o.id, o.kind, o.payload, o.job_id, o.chunk_id).where(
        o.status == OutboxStatus.PENDING)
    if only_id is not None:
        query = query.where(o.id == only_id)
    rows = [PendingRow(*found) for found in session.execute(
        query.order_by(o.id).limit(limit).with_for_update(skip_locked=True))]
    job_status = _job_statuses(session, [r.job_id for r in rows
                                         if r.kind == KIND_CANVAS and r.job_id is not None])
    sent: list[int] = []
    dropped: list[int] = []
    canvases: list[int] = []
    for row in rows:
        if row.kind == KIND_CANVAS and row.job_id is not None and (
                job_status.get(row.job_id) != JobStatus.IN_PROGRESS):
            dropped.append(row.id)
            log.info("outbox.dropped", outbox_id=row.id, job_id=row.job_id,
                     job_status=job_status.get(row.job_id))
            continue
        try:
            publish(row)
        except Exception as exc:
            _record_failure(session, row.id, exc)
            if isinstance(exc, BROKER_DOWN):
                break
            continue
        sent.append(row.id)
        log.debug("outbox.sent", outbox_id=row.id, kind=row.kind, chunk_id=row.chunk_id)
        if row.kind == KIND_CANVAS and row.chunk_id is not None:
            canvases.append(row.chunk_id)
    if dropped:
        session.execute(update(core.outbox).where(o.id.in_(dropped))
                        .values(status=OutboxStatus.DROPPED))
    _mark_sent(session, sent)
    _mark_dispatched(session, canvases, start_timeout)
    return len(sent) + len(dropped)


def _job_statuses(session: Session, job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    j = core.job.c
    return {job_id: status for job_id, status in session.execute(
        select(j.id, j.status).where(j.id.in_(sorted(set(job_ids)))))}


def _record_failure(session: Session, outbox_id: int, exc: Exception) -> None:
    row = session.get(Outbox, outbox_id)
    assert row is not None
    row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    # Only tries that reached the broker count: an outage, however long, must not
    # bring a row nearer to being given up.
    if not isinstance(exc, BROKER_DOWN):
        row.attempts += 1
        if row.attempts >= MAX_ATTEMPTS:
            _give_up(session, row)
    session.add(row)
    session.flush()
    log.warning("outbox.publish_failed", outbox_id=row.id, attempts=row.attempts,
                error=row.last_error)


def _mark_dispatched(session: Session, chunk_ids: list[int], start_timeout: int) -> None:
    """Published canvases: their first task must start within the bound (the sweeper's
    watch). One statement at the end of the batch, so the chunk rows are locked only for
    the commit: a generator given a chunk's message while the rest of the batch was still
    being published used to wait on its row (seconds at the start of a large job)."""
    if not chunk_ids:
        return
    c = core.chunk.c
    session.execute(
        update(core.chunk)
        .where(c.id.in_(chunk_ids), c.status == ChunkStatus.PENDING)
        .values(status=ChunkStatus.DISPATCHED, stage=ChunkStage.GENERATE,
                lease_until=database_now(session) + timedelta(seconds=start_timeout))
    )


def publish_now(database_url: str, app: Celery, queued: Iterable[tuple[int, dict[str, Any]]],
                start_timeout: int = lifecycle.DEFAULT_START_TIMEOUT) -> None:
    """Publish rows a task just committed, ``(outbox id, payload)``, without waiting for
    the dispatcher. The rows are claimed as the relay claims them (``SKIP LOCKED``, so a
    dispatcher polling meanwhile sends each at most once with it), sent from the payloads
    in hand and marked sent in one statement. A row that cannot go now stays pending and
    the dispatcher sends it (the hop is durable either way)."""
    payloads = dict(queued)
    if not payloads:
        return
    try:
        # Marking rows sent need not wait for the disk: if the mark is lost, the dispatcher
        # sends the row again, as after a crash between a publish and its commit.
        with session_scope(database_url, flush_wal=False) as session:
            sent: list[int] = []
            for outbox_id in _claim_pending(session, sorted(payloads)):
                try:
                    from_payload(app, payloads[outbox_id]).apply_async()
                except Exception as exc:
                    # On the row, as the relay records it: an operator sees why it waits.
                    _record_failure(session, outbox_id, exc)
                    break
                sent.append(outbox_id)
            _mark_sent(session, sent)
    except Exception as exc:
        log.warning("outbox.publish_deferred", outbox_ids=sorted(payloads),
                    error=f"{type(exc).__name__}: {exc}")


def _claim_pending(session: Session, outbox_ids: list[int]) -> list[int]:
    o = core.outbox.c
    return list(session.execute(
        select(o.id).where(o.id.in_(outbox_ids), o.status == OutboxStatus.PENDING)
        .order_by(o.id).with_for_update(skip_locked=True)).scalars())


def _mark_sent(session: Session, outbox_ids: list[int]) -> None:
    if outbox_ids:
        o = core.outbox.c
        session.execute(
            update(core.outbox).where(o.id.in_(outbox_ids))
            .values(status=OutboxStatus.SENT, attempts=o.attempts + 1, published_at=utcnow()))


def _give_up(session: Session, row: Outbox) -> None:
    row.status = OutboxStatus.FAILED
    log.error("outbox.given_up", outbox_id=row.id, chunk_id=row.chunk_id, error=row.last_error)
    # A canvas that never went out leaves its chunk pending: nothing else would end it.
    # A later hop (rank, fuse) is left to the sweeper, which re-publishes it and fails the
    # chunk only after its own bound: its requests may already have their ranking.
    if row.chunk_id is not None and row.kind == KIND_CANVAS:
        lifecycle.abandon_chunk(session, row.chunk_id,
                                f"its work could not be published: {row.last_error}")
