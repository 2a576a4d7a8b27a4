"""Job and chunk states, request counts, cancellation and finalisation.

Lock order, everywhere: the job row, then its chunk rows. Counts are recomputed from the
request rows rather than incremented, so a stage that runs twice cannot skew them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from db.models import (
    ACTIVE_CHUNK_STATUSES,
    TERMINAL_JOB_STATUSES,
    Chunk,
    ChunkStatus,
    Job,
    JobStatus,
    Outbox,
    OutboxStatus,
    Request,
    RequestStatus,
    utcnow,
)

# Which job status may follow which: anything else is a bug, not a race to tolerate.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset(
        {JobStatus.IN_PROGRESS, JobStatus.FAILED, JobStatus.CANCELLING}),
    JobStatus.IN_PROGRESS: frozenset(
        {JobStatus.FINALIZING, JobStatus.CANCELLING, JobStatus.EXPIRED, JobStatus.FAILED}),
    JobStatus.FINALIZING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

_STAMP = {
    JobStatus.IN_PROGRESS: "in_progress_at",
    JobStatus.FINALIZING: "finalizing_at",
    JobStatus.COMPLETED: "completed_at",
    JobStatus.FAILED: "failed_at",
    JobStatus.EXPIRED: "expired_at",
    JobStatus.CANCELLING: "cancelling_at",
    JobStatus.CANCELLED: "cancelled_at",
}


class InvalidTransition(RuntimeError):
    pass


def transition(job: Job, new: JobStatus, at: datetime | None = None) -> None:
    current = JobStatus(job.status)
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"job {job.id}: {current} cannot become {new}")
    job.status = new
    setattr(job, _STAMP[new], at or utcnow())


def lock_job(session: Session, job_id: str) -> Job | None:
    return session.exec(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()


def start_chunk(session: Session, chunk_id: int) -> bool:
    """Whether a stage should work on this chunk; the first stage to ask starts it.

    A chunk whose job is being cancelled and that no task has started yet is cancelled
    here instead, which is how "no new chunk starts" holds for chunks already published.
    """
    job_id = session.exec(select(Chunk.job_id).where(Chunk.id == chunk_id)).one_or_none()
    if job_id is None:
        return False
    job = lock_job(session, job_id)
    chunk = session.exec(select(Chunk).where(Chunk.id == chunk_id).with_for_update()).one()
    assert job is not None
    if chunk.status == ChunkStatus.RUNNING:
        return True
    if chunk.status in (ChunkStatus.DONE, ChunkStatus.CANCELLED):
        return False
    if job.status != JobStatus.IN_PROGRESS:
        _cancel_chunks(session, [chunk])
        maybe_finalize(session, job)
        return False
    chunk.status = ChunkStatus.RUNNING
    chunk.started_at = utcnow()
    session.add(chunk)
    return True


def chunk_is_running(session: Session, chunk_id: int) -> bool:
    status = session.exec(select(Chunk.status).where(Chunk.id == chunk_id)).one_or_none()
    return status == ChunkStatus.RUNNING


def finish_chunk(session: Session, chunk_id: int) -> Job | None:
    """Mark a chunk done once, recount its job and finalise the job if nothing is left."""
    job_id = session.exec(select(Chunk.job_id).where(Chunk.id == chunk_id)).one_or_none()
    if job_id is None:
        return None
    job = lock_job(session, job_id)
    assert job is not None
    session.execute(
        update(Chunk)
        .where(col(Chunk.id) == chunk_id, col(Chunk.status) == ChunkStatus.RUNNING)
        .values(status=ChunkStatus.DONE, finished_at=utcnow())
    )
    recount(session, job)
    maybe_finalize(session, job)
    return job


def abandon_chunk(session: Session, chunk_id: int, reason: str) -> None:
    """A chunk whose work cannot be sent: its open requests fail, the job goes on."""
    job_id = session.exec(select(Chunk.job_id).where(Chunk.id == chunk_id)).one_or_none()
    if job_id is None:
        return
    job = lock_job(session, job_id)
    chunk = session.exec(select(Chunk).where(Chunk.id == chunk_id).with_for_update()).one()
    assert job is not None
    if chunk.status in (ChunkStatus.DONE, ChunkStatus.CANCELLED):
        return
    chunk.status = ChunkStatus.DONE
    chunk.finished_at = utcnow()
    session.add(chunk)
    session.execute(
        update(Request)
        .where(col(Request.chunk_id) == chunk_id, col(Request.status) == RequestStatus.PENDING)
        .values(status=RequestStatus.FAILED, error=reason)
    )
    session.flush()
    recount(session, job)
    maybe_finalize(session, job)


def recount(session: Session, job: Job) -> None:
    rows = session.exec(
        select(Request.status, func.count()).where(Request.job_id == job.id)
        .group_by(Request.status)
    ).all()
    by_status = dict(rows)
    job.total = sum(by_status.values())
    job.completed = by_status.get(RequestStatus.COMPLETED, 0)
    job.failed = by_status.get(RequestStatus.FAILED, 0)
    session.add(job)


def maybe_finalize(session: Session, job: Job) -> None:
    """Close the job when none of its chunks can still run (the caller holds its lock)."""
    if job.status not in (JobStatus.IN_PROGRESS, JobStatus.CANCELLING):
        return
    active = session.exec(
        select(func.count()).select_from(Chunk)
        .where(Chunk.job_id == job.id, col(Chunk.status).in_(ACTIVE_CHUNK_STATUSES))
    ).one()
    if active:
        return
    recount(session, job)
    now = utcnow()
    if job.status == JobStatus.CANCELLING:
        transition(job, JobStatus.CANCELLED, now)
    else:
        transition(job, JobStatus.FINALIZING, now)
        transition(job, JobStatus.COMPLETED, now)
    session.add(job)


def cancel_job(session: Session, job_id: str) -> Job | None:
    """Stop new chunks from starting; running chunks finish and keep their results."""
    job = lock_job(session, job_id)
    if job is None:
        return None
    if JobStatus(job.status) in TERMINAL_JOB_STATUSES or job.status == JobStatus.CANCELLING:
        return job
    transition(job, JobStatus.CANCELLING)
    _stop_unstarted(session, job_id, "job cancelled before this chunk started")
    maybe_finalize(session, job)
    return job


def expire_due_jobs(session: Session, now: datetime | None = None) -> list[str]:
    """Expire in-progress jobs past their completion window, as the Batch API does.

    Chunks not yet started are cancelled (their requests become cancelled, with the reason
    in their error); chunks already running finish and their results are kept and counted.
    """
    now = now or utcnow()
    due = session.exec(
        select(Job.id).where(Job.status == JobStatus.IN_PROGRESS,
                             col(Job.expires_at).is_not(None), col(Job.expires_at) < now)
    ).all()
    expired = []
    for job_id in due:
        job = lock_job(session, job_id)
        if job is None or job.status != JobStatus.IN_PROGRESS:
            continue
        transition(job, JobStatus.EXPIRED, now)
        _stop_unstarted(session, job_id, "job expired before this chunk started")
        recount(session, job)
        expired.append(job_id)
    return expired


def _stop_unstarted(session: Session, job_id: str, reason: str) -> None:
    """Drop the job's unpublished canvases and cancel every chunk no task has started."""
    session.execute(
        update(Outbox)
        .where(col(Outbox.job_id) == job_id, col(Outbox.status) == OutboxStatus.PENDING,
               col(Outbox.kind) == "canvas")
        .values(status=OutboxStatus.DROPPED)
    )
    waiting = session.exec(
        select(Chunk).where(
            Chunk.job_id == job_id,
            col(Chunk.status).in_((ChunkStatus.PENDING, ChunkStatus.DISPATCHED)),
        ).with_for_update()
    ).all()
    _cancel_chunks(session, list(waiting), reason)


def _cancel_chunks(session: Session, chunks: list[Chunk],
                   reason: str = "job cancelled before this chunk started") -> None:
    if not chunks:
        return
    now = utcnow()
    for chunk in chunks:
        chunk.status = ChunkStatus.CANCELLED
        chunk.finished_at = now
        session.add(chunk)
    session.execute(
        update(Request)
        .where(col(Request.chunk_id).in_([c.id for c in chunks]),
               col(Request.status) == RequestStatus.PENDING)
        .values(status=RequestStatus.CANCELLED, error=reason)
    )
    session.flush()
