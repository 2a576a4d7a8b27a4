"""The sweeper: re-publish chunks whose messages went missing, and end them after a bound.

RabbitMQ only carries wake-ups; PostgreSQL holds each active chunk's stage and lease
(orchestration/lifecycle.py). A lease lapses when no worker renews it (the worker died)
or when the stage's message did not start within ``chunk_start_timeout``. Then:

- if a queue the chunk waits on still holds ready messages, its message may simply wait
  behind others (a deep backlog, a paused model), and if one of its outbox rows is still
  pending, its message has not been published yet (the broker is away or refuses it):
  either way the lease is extended and nothing counted;
- otherwise the message is gone (a purged or deleted queue, a lost node, a dead letter):
  the chunk's stage is re-published through the outbox (only the generators whose
  candidates are missing, or the rank or fuse message), and ``sweeps`` counts it;
- after ``chunk_max_sweeps`` re-publications its open requests fail with the reason, so
  the job ends.

Every task is idempotent, so a message that was only late and arrives after its
re-publication does no harm. Any number of dispatchers may sweep: each chunk is taken
with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from celery import Celery
from celery.canvas import Signature
from sqlalchemy import func
from sqlmodel import Session, col, select

from db.clock import database_now
from db.engine import session_scope
from db.models import (
    Candidate,
    Chunk,
    ChunkStage,
    ChunkStatus,
    Job,
    Outbox,
    OutboxStatus,
    Request,
    RequestStatus,
)
from orchestration import lifecycle, outbox
from orchestration.canvas import chunk_canvas, fuse_signature, rank_signature, to_payload
from orchestration.celery_app import FUSE_QUEUE, RANK_QUEUE, gen_queue
from orchestration.settings import Settings

log = structlog.get_logger(__name__)
BATCH = 200
# Ready messages per queue; None when the broker cannot tell (then nothing is swept).
DepthReader = Callable[[list[str]], dict[str, int | None]]


@dataclass
class SweepReport:
    extended: list[int] = field(default_factory=list)
    republished: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def broker_depths(broker_url: str) -> DepthReader:
    from orchestration.queue_admin import queue_states

    def read(names: list[str]) -> dict[str, int | None]:
        return {q.name: q.messages for q in queue_states(broker_url, names)}

    return read


def sweep(settings: Settings, app: Celery, depths: DepthReader) -> SweepReport:
    """One pass over the chunks whose lease lapsed; returns what it did to which."""
    report = SweepReport()
    with session_scope(settings.database_url) as session:
        now = database_now(session)  # the clock every lease was written on
        lapsed = list(session.exec(
            select(Chunk.id).where(
                col(Chunk.status).in_((ChunkStatus.DISPATCHED, ChunkStatus.RUNNING)),
                col(Chunk.lease_until) < now)
            .order_by(col(Chunk.lease_until)).limit(BATCH)
        ).all())
    known: dict[str, int | None] = {}

    def depth_of(queues: list[str]) -> list[int | None]:
        unknown = [q for q in queues if q not in known]
        if unknown:
            known.update(depths(unknown))
        return [known.get(q) for q in queues]

    for chunk_id in lapsed:
        assert chunk_id is not None
        give_up = _sweep_one(settings, app, chunk_id, depth_of, report)
        if give_up is not None:
            with session_scope(settings.database_url) as session:
                lifecycle.abandon_chunk(session, chunk_id, give_up)
            report.failed.append(chunk_id)
            log.error("sweep.chunk_failed", chunk_id=chunk_id, reason=give_up)
    if report.republished or report.failed:
        log.info("sweep.done", republished=len(report.republished),
                 failed=len(report.failed), extended=len(report.extended))
    return report


def _sweep_one(settings: Settings, app: Celery, chunk_id: int,
               depth_of: Callable[[list[str]], list[int | None]],
               report: SweepReport) -> str | None:
    """Extend or re-publish one chunk; returns the reason when it must fail instead."""
    with session_scope(settings.database_url) as session:
        now = database_now(session)
        chunk = session.exec(
            select(Chunk).where(
                Chunk.id == chunk_id,
                col(Chunk.status).in_((ChunkStatus.DISPATCHED, ChunkStatus.RUNNING)),
                col(Chunk.lease_until) < now)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if chunk is None:
            return None  # renewed, finished, or another dispatcher has it
        job = session.get(Job, chunk.job_id)
        assert job is not None
        missing = _missing_models(session, chunk, job) if chunk.stage == ChunkStage.GENERATE \
            else []
        queues = _queues_of(chunk.stage, missing)
        found = depth_of(queues)
        if any(d is None for d in found):
            return None  # the broker is away: nothing can be told now
        bound = now + timedelta(seconds=settings.chunk_start_timeout)
        if any(d for d in found) or _unsent(session, chunk_id):
            chunk.lease_until = bound
            session.add(chunk)
            report.extended.append(chunk_id)
            return None
        if chunk.sweeps >= settings.chunk_max_sweeps:
            return (f"chunk stalled in its {chunk.stage} stage: its messages were lost or "
                    f"dead-lettered, and {chunk.sweeps} re-publications did not bring it "
                    f"through (BLENDQ_CHUNK_MAX_SWEEPS)")
        chunk.sweeps += 1
        chunk.epoch += 1
        chunk.lease_until = bound
        if chunk.stage == ChunkStage.GENERATE and not missing:
            # Every candidate is stored; only the count of a part went missing.
            chunk.stage = ChunkStage.RANK
        session.add(chunk)
        payload = to_payload(_message(app, chunk, missing))
        outbox.add(session, outbox.KIND_SIGNATURE, payload, job_id=chunk.job_id,
                   chunk_id=chunk_id, dedup_key=f"sweep:{chunk_id}:{chunk.epoch}")
        report.republished.append(chunk_id)
        log.warning("sweep.republished", chunk_id=chunk_id, job_id=chunk.job_id,
                    stage=chunk.stage, models=missing, sweeps=chunk.sweeps)
    return None


def _unsent(session: Session, chunk_id: int) -> bool:
    """Whether a message of the chunk still waits in the outbox: not lost, only not yet
    published (the broker refuses or is away), and the dispatcher keeps trying."""
    return session.exec(
        select(func.count()).select_from(Outbox)
        .where(Outbox.chunk_id == chunk_id, Outbox.status == OutboxStatus.PENDING)
    ).one() > 0


def _missing_models(session: Session, chunk: Chunk, job: Job) -> list[str]:
    """The job's generators that still lack a candidate for an open request of the chunk."""
    open_ids = select(Request.id).where(Request.chunk_id == chunk.id,
                                        Request.status == RequestStatus.PENDING)
    needed = session.exec(select(func.count()).select_from(open_ids.subquery())).one()
    if not needed:
        return []
    have = dict(session.exec(
        select(Candidate.model, func.count())
        .where(col(Candidate.request_id).in_(open_ids))
        .group_by(Candidate.model)
    ).all())
    return [m for m in job.models if have.get(m, 0) < needed]


def _queues_of(stage: str, missing: list[str]) -> list[str]:
    if stage == ChunkStage.GENERATE:
        return [gen_queue(m) for m in missing]
    return [RANK_QUEUE if stage == ChunkStage.RANK else FUSE_QUEUE]


def _message(app: Celery, chunk: Chunk, missing: list[str]) -> Signature:
    assert chunk.id is not None
    if chunk.stage == ChunkStage.GENERATE:
        return chunk_canvas(app, chunk.job_id, chunk.id, missing)
    if chunk.stage == ChunkStage.RANK:
        return rank_signature(app, chunk.job_id, chunk.id)
    return fuse_signature(app, chunk.job_id, chunk.id)
