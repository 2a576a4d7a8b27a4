"""The transactional outbox and its relay to RabbitMQ.

Rows are written in the transaction that creates what they refer to; the relay claims them
with ``FOR UPDATE SKIP LOCKED`` (so several dispatchers share the work), publishes with
broker confirms and marks them sent in the same transaction. A crash between publish and
commit publishes the row again: delivery is at least once, and every task is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import kombu.exceptions
import structlog
from celery import Celery
from sqlalchemy import text, update
from sqlmodel import Session, col, select

from db.engine import is_postgres, session_scope
from db.models import (
    Chunk,
    ChunkStage,
    ChunkStatus,
    Job,
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
Publisher = Callable[[Outbox], None]


def add(session: Session, kind: str, payload: dict[str, Any], *, job_id: str | None = None,
        chunk_id: int | None = None, dedup_key: str | None = None,
        notify: bool = True) -> int | None:
    """Queue a message; with a ``dedup_key`` a second add is a no-op and returns None.

    ``notify=False`` for a row its writer publishes itself right after committing
    (:func:`publish_now`): waking the dispatcher would only have it race for the row. If
    that publish fails, the dispatcher's next poll sends it.
    """
    row = {"kind": kind, "payload": payload, "job_id": job_id, "chunk_id": chunk_id,
           "dedup_key": dedup_key, "status": OutboxStatus.PENDING, "attempts": 0,
           "created_at": utcnow()}
    ids = insert_ignore(session, Outbox, [row], returning="id")
    if ids and notify and is_postgres(session):
        session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return ids[0] if ids else None


def celery_publisher(app: Celery) -> Publisher:
    def publish(row: Outbox) -> None:
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
    """
    query = select(Outbox).where(Outbox.status == OutboxStatus.PENDING)
    if only_id is not None:
        query = query.where(Outbox.id == only_id)
    rows = session.exec(
        query.order_by(col(Outbox.id)).limit(limit).with_for_update(skip_locked=True)
    ).all()
    handled = 0
    published: list[int] = []
    for row in rows:
        try:
            chunk_id = _relay_row(session, row, publish)
        except BROKER_DOWN:
            break
        except Exception:
            continue
        handled += 1
        if chunk_id is not None:
            published.append(chunk_id)
    _mark_dispatched(session, published, start_timeout)
    return handled


def _mark_dispatched(session: Session, chunk_ids: list[int], start_timeout: int) -> None:
    """Published canvases: their first task must start within the bound (the sweeper's
    watch). One statement at the end of the batch, so the chunk rows are locked only for
    the commit: a generator given a chunk's message while the rest of the batch was still
    being published used to wait on its row (seconds at the start of a large job)."""
    if not chunk_ids:
        return
    session.execute(
        update(Chunk)
        .where(col(Chunk.id).in_(chunk_ids), col(Chunk.status) == ChunkStatus.PENDING)
        .values(status=ChunkStatus.DISPATCHED, stage=ChunkStage.GENERATE,
                lease_until=utcnow() + timedelta(seconds=start_timeout))
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
            claimed = _claim_pending(session, sorted(payloads))
            sent: list[int] = []
            try:
                for outbox_id in claimed:
                    from_payload(app, payloads[outbox_id]).apply_async()
                    sent.append(outbox_id)
            finally:
                _mark_sent(session, sent)
    except Exception as exc:
        log.warning("outbox.publish_deferred", outbox_ids=sorted(payloads),
                    error=f"{type(exc).__name__}: {exc}")


def _claim_pending(session: Session, outbox_ids: list[int]) -> list[int]:
    query = (select(Outbox.id)
             .where(col(Outbox.id).in_(outbox_ids), Outbox.status == OutboxStatus.PENDING)
             .order_by(col(Outbox.id)))
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    return [outbox_id for outbox_id in session.exec(query).all() if outbox_id is not None]


def _mark_sent(session: Session, outbox_ids: list[int]) -> None:
    if outbox_ids:
        session.execute(
            update(Outbox).where(col(Outbox.id).in_(outbox_ids))
            .values(status=OutboxStatus.SENT, attempts=col(Outbox.attempts) + 1,
                    published_at=utcnow()))


def _relay_row(session: Session, row: Outbox, publish: Publisher) -> int | None:
    """Publish one row and mark it sent; returns the chunk a canvas it sent belongs to."""
    if row.kind == KIND_CANVAS and row.job_id is not None:
        status = session.exec(select(Job.status).where(Job.id == row.job_id)).one_or_none()
        if status != JobStatus.IN_PROGRESS:
            row.status = OutboxStatus.DROPPED
            session.add(row)
            log.info("outbox.dropped", outbox_id=row.id, job_id=row.job_id, job_status=status)
            return None
    try:
        publish(row)
    except Exception as exc:
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
        raise
    row.attempts += 1
    row.status = OutboxStatus.SENT
    row.published_at = utcnow()
    session.add(row)
    log.debug("outbox.sent", outbox_id=row.id, kind=row.kind, chunk_id=row.chunk_id)
    return row.chunk_id if row.kind == KIND_CANVAS else None


def _give_up(session: Session, row: Outbox) -> None:
    row.status = OutboxStatus.FAILED
    log.error("outbox.given_up", outbox_id=row.id, chunk_id=row.chunk_id, error=row.last_error)
    # A canvas that never went out leaves its chunk pending: nothing else would end it.
    # A later hop (rank, fuse) is left to the sweeper, which re-publishes it and fails the
    # chunk only after its own bound: its requests may already have their ranking.
    if row.chunk_id is not None and row.kind == KIND_CANVAS:
        lifecycle.abandon_chunk(session, row.chunk_id,
                                f"its work could not be published: {row.last_error}")
