"""Job and chunk states, request counts, cancellation and finalisation.

Lock order: the job row, then its chunk rows, except where a running chunk finishes (its
row, then the job's, at the very end; see finish_chunk). Counts move once per chunk, when
it closes (running → done happens once under the chunk's lock), by that chunk's requests:
a stage that runs twice cannot skew them, and a chunk's end costs O(chunk), not O(job).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import DateTime, bindparam, func, text, update
from sqlmodel import Session, col, select

from db import core
from db.clock import database_now
from db.engine import is_postgres
from db.models import (
    ACTIVE_CHUNK_STATUSES,
    TERMINAL_JOB_STATUSES,
    Chunk,
    ChunkStage,
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


# Used when a caller passes no settings: the defaults of orchestration/settings.py.
DEFAULT_LEASE_SECONDS = 60
DEFAULT_START_TIMEOUT = 300


def start_chunk(session: Session, chunk_id: int,
                lease_seconds: int = DEFAULT_LEASE_SECONDS) -> bool:
    """Whether a stage should work on this chunk; the first stage to ask starts it.

    Takes only the chunk's row lock, so chunks start while others finish (a finishing chunk
    holds its job's row). A chunk whose job is being cancelled and that no task has
    started yet is cancelled here instead, which is how "no new chunk starts" holds for
    chunks already published; that rarer path locks the job first, as cancelling does.
    """
    if _start_running(session, chunk_id, lease_seconds):
        return True
    found = session.exec(select(Chunk.job_id, Chunk.status)
                         .where(Chunk.id == chunk_id)).one_or_none()
    if found is None:
        return False
    job_id, status = found
    if status in (ChunkStatus.DONE, ChunkStatus.CANCELLED):
        return False
    job_status = session.exec(select(Job.status).where(Job.id == job_id)).one()
    if job_status != JobStatus.IN_PROGRESS and status != ChunkStatus.RUNNING:
        return _cancel_unstarted(session, job_id, chunk_id)
    chunk = _lock_chunk(session, chunk_id)
    if chunk.status in (ChunkStatus.DONE, ChunkStatus.CANCELLED):
        return False
    now = database_now(session)
    if chunk.status != ChunkStatus.RUNNING:
        chunk.status = ChunkStatus.RUNNING
        chunk.started_at = now
    chunk.lease_until = now + timedelta(seconds=lease_seconds)
    session.add(chunk)
    return True


def _start_running(session: Session, chunk_id: int, lease_seconds: int) -> bool:
    """The common case of :func:`start_chunk` in one statement: an active chunk of a job in
    progress starts (or renews its lease) under its own row lock. The job row is only
    read, not locked. Anything else (no such chunk, a chunk closed, a job no longer in
    progress) is left to the full path."""
    now = database_now(session)
    started = session.execute(_START_ONE, {
        "chunk_id": chunk_id, "now": now, "until": now + timedelta(seconds=lease_seconds)})
    return started.first() is not None


_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_CHUNK_STATUSES)
_START_ONE = text(f"""
UPDATE chunk SET status = '{ChunkStatus.RUNNING}', started_at = coalesce(started_at, :now),
                 lease_until = :until
WHERE id = :chunk_id AND status IN ({_ACTIVE})
  AND EXISTS (SELECT 1 FROM job WHERE job.id = chunk.job_id
                                  AND job.status = '{JobStatus.IN_PROGRESS}')
RETURNING id
""").bindparams(bindparam("now", type_=DateTime(timezone=True)),
                bindparam("until", type_=DateTime(timezone=True)))


def start_chunks(session: Session, chunk_ids: list[int],
                 lease_seconds: int = DEFAULT_LEASE_SECONDS) -> list[int]:
    """:func:`start_chunk` for several chunks in a few statements: the ones it starts (or
    whose lease it renews), in id order.

    The chunks' row locks are taken in id order, so two workers starting overlapping sets
    wait on each other instead of deadlocking. A chunk of a job that is no longer in
    progress and that nothing started yet takes :func:`start_chunk`'s cancelling path
    first, which locks the job before the chunk, as cancelling does.
    """
    if not chunk_ids:
        return []
    started = _start_all_running(session, chunk_ids, lease_seconds)
    rest = sorted(set(chunk_ids) - set(started))
    if not rest:
        return started
    return sorted(started + _start_chunks_one_by_one(session, rest, lease_seconds))


_START_ALL = text(f"""
WITH locked AS (
    SELECT c.id FROM chunk c JOIN job j ON j.id = c.job_id
    WHERE c.id = ANY(:ids) AND c.status IN ({_ACTIVE}) AND j.status = '{JobStatus.IN_PROGRESS}'
    ORDER BY c.id FOR UPDATE OF c)
UPDATE chunk SET status = '{ChunkStatus.RUNNING}', started_at = coalesce(chunk.started_at, :now),
                 lease_until = :until
FROM locked WHERE chunk.id = locked.id
RETURNING chunk.id
""")
"""The common case of :func:`start_chunks` in one statement: the active chunks of jobs in
progress, their row locks taken in id order."""


def _start_all_running(session: Session, chunk_ids: list[int], lease_seconds: int) -> list[int]:
    if not is_postgres(session):
        return []
    now = database_now(session)
    rows = session.execute(_START_ALL, {"ids": sorted(chunk_ids), "now": now,
                                        "until": now + timedelta(seconds=lease_seconds)})
    return sorted(row[0] for row in rows)


def _start_chunks_one_by_one(session: Session, chunk_ids: list[int],
                             lease_seconds: int) -> list[int]:
    seen = session.exec(
        select(Chunk.id, Chunk.status, Job.status).join(Job, col(Job.id) == Chunk.job_id)
        .where(col(Chunk.id).in_(chunk_ids))).all()
    for chunk_id, status, job_status in seen:
        if job_status != JobStatus.IN_PROGRESS and status in (ChunkStatus.PENDING,
                                                              ChunkStatus.DISPATCHED):
            start_chunk(session, chunk_id or 0, lease_seconds)  # cancels it
    locked = [chunk_id for chunk_id in session.exec(
        select(Chunk.id).where(col(Chunk.id).in_([row[0] for row in seen]),
                               col(Chunk.status).in_(ACTIVE_CHUNK_STATUSES))
        .order_by(col(Chunk.id)).with_for_update()).all() if chunk_id is not None]
    if locked:
        now = database_now(session)
        session.execute(
            update(Chunk).where(col(Chunk.id).in_(locked))
            .values(status=ChunkStatus.RUNNING,
                    started_at=func.coalesce(col(Chunk.started_at), now),
                    lease_until=now + timedelta(seconds=lease_seconds)))
    return locked


def _lock_chunk(session: Session, chunk_id: int) -> Chunk:
    return session.exec(select(Chunk).where(Chunk.id == chunk_id).with_for_update()).one()


def _cancel_unstarted(session: Session, job_id: str, chunk_id: int) -> bool:
    job = lock_job(session, job_id)
    chunk = _lock_chunk(session, chunk_id)
    assert job is not None
    if chunk.status == ChunkStatus.RUNNING:
        return True
    if chunk.status in (ChunkStatus.PENDING, ChunkStatus.DISPATCHED):
        _cancel_chunks(session, [chunk])
        job.chunks_left -= 1
        maybe_finalize(session, job)
    return False


def chunk_is_running(session: Session, chunk_id: int) -> bool:
    status = session.execute(_CHUNK_STATUS, {"chunk_id": chunk_id}).scalar_one_or_none()
    return status == ChunkStatus.RUNNING


_CHUNK_STATUS = text("SELECT status FROM chunk WHERE id = :chunk_id")


def enter_stage(session: Session, chunk_id: int, stage: ChunkStage,
                start_timeout: int = DEFAULT_START_TIMEOUT) -> None:
    """The chunk now waits on ``stage``'s message, which must start within the bound."""
    until = database_now(session) + timedelta(seconds=start_timeout)
    session.execute(_ENTER_STAGE, {"chunk_id": chunk_id, "stage": str(stage), "until": until})


_ENTER_STAGE = text(f"""
UPDATE chunk SET stage = :stage, lease_until = :until
WHERE id = :chunk_id AND status IN ({_ACTIVE})
""").bindparams(bindparam("until", type_=DateTime(timezone=True)))


def renew_leases(session: Session, chunk_ids: list[int], seconds: int) -> int:
    """Extend the leases of running chunks a worker still works on."""
    if not chunk_ids:
        return 0
    c = core.chunk.c
    result = session.execute(
        update(core.chunk)
        .where(c.id.in_(chunk_ids), c.status == ChunkStatus.RUNNING)
        .values(lease_until=database_now(session) + timedelta(seconds=seconds))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def finish_chunk(session: Session, chunk_id: int) -> str | None:
    """Mark a running chunk done once and move its job's counts by its requests; returns
    the chunk's job id (None for no such chunk).

    Order of locks: the chunk, then the job row, taken by the counter update at the very
    end, so the job is locked only for the rest of this transaction. Cancelling (job, then
    chunks not yet running) never waits on a running chunk, so the two cannot deadlock.
    """
    session.flush()  # the stage's request updates, which the count below reads
    closed = session.execute(_FINISH, {"chunk_id": chunk_id, "now": utcnow()}).first()
    if closed is None:
        return session.exec(select(Chunk.job_id).where(Chunk.id == chunk_id)).one_or_none()
    _count_closed(session, closed.job_id, [chunk_id])
    return str(closed.job_id)


# Hot statements as text: an expression built per call, and its cache key, cost as much
# CPU as running it (a fusion worker spent a sixth of its time building these two).
_FINISH = text(f"""
UPDATE chunk SET status = '{ChunkStatus.DONE}', finished_at = :now, lease_until = NULL
WHERE id = :chunk_id AND status = '{ChunkStatus.RUNNING}'
RETURNING job_id
""").bindparams(bindparam("now", type_=DateTime(timezone=True)))

_OUTCOMES = text("SELECT status, count(*) FROM request WHERE chunk_id IN :chunk_ids "
                 "GROUP BY status").bindparams(bindparam("chunk_ids", expanding=True))

_MOVE_COUNTS = text("""
UPDATE job SET completed = completed + :completed, failed = failed + :failed,
               chunks_left = chunks_left - :chunks
WHERE id = :job_id
RETURNING chunks_left
""")


def ranked_candidates(session: Session, request_ids: list[int]) -> dict[int, list[int]]:
    """Each ranked request's candidate ids, best first, from its latest ranking."""
    k = core.ranking.c
    rankings = session.execute(
        select(k.request_id, k.entries).where(core.among(session, k.request_id, request_ids))
        .order_by(k.id)).all()
    return {rid: [e["candidate_id"] for e in entries] for rid, entries in rankings}


def keep_ranked_choice(session: Session, request_ids: list[int]) -> None:
    """Requests about to fail after their ranking was stored keep the ranker's choice:
    fusion writes ``chosen_candidate_id`` with its outcome, so a fuse stage that fails,
    for good or by the sweeper, would otherwise leave the auditor a ranking without it."""
    if not request_ids:
        return
    r = core.request.c
    best = {rid: ranked[0] for rid, ranked in ranked_candidates(session, request_ids).items()
            if ranked}
    if best:
        session.execute(
            update(core.request)
            .where(r.id == bindparam("ranked_id"), r.chosen_candidate_id.is_(None))
            .values(chosen_candidate_id=bindparam("best_id")),
            [{"ranked_id": rid, "best_id": cid} for rid, cid in best.items()])


def abandon_chunk(session: Session, chunk_id: int, reason: str) -> None:
    """A chunk whose work cannot go on: its open requests fail, the job goes on.

    Any active chunk may be abandoned (a purged or stalled one may not have started), so
    this takes the job's lock first, in the order cancelling uses.
    """
    job_id = session.exec(select(Chunk.job_id).where(Chunk.id == chunk_id)).one_or_none()
    if job_id is None:
        return
    job = lock_job(session, job_id)
    chunk = _lock_chunk(session, chunk_id)
    assert job is not None
    if chunk.status not in ACTIVE_CHUNK_STATUSES:
        return
    chunk.status = ChunkStatus.DONE
    chunk.finished_at = utcnow()
    chunk.lease_until = None
    session.add(chunk)
    open_ids = session.exec(select(Request.id).where(
        col(Request.chunk_id) == chunk_id, col(Request.status) == RequestStatus.PENDING)).all()
    keep_ranked_choice(session, [i for i in open_ids if i is not None])
    session.execute(
        update(Request)
        .where(col(Request.chunk_id) == chunk_id, col(Request.status) == RequestStatus.PENDING)
        .values(status=RequestStatus.FAILED, error=reason)
    )
    session.flush()
    _count_closed(session, job_id, [chunk_id])


def _count_closed(session: Session, job_id: str, chunk_ids: list[int]) -> None:
    """Add the outcome of chunks that just closed to their job: O(chunk) reads, one update
    of the job row (atomic, so concurrent chunk ends cannot lose a count). The job itself
    is read only when it may be finished."""
    by_status: dict[str, int] = {
        status: count for status, count in session.execute(_OUTCOMES, {"chunk_ids": chunk_ids})}
    left = session.execute(_MOVE_COUNTS, {
        "completed": by_status.get(RequestStatus.COMPLETED, 0),
        "failed": by_status.get(RequestStatus.FAILED, 0),
        "chunks": len(chunk_ids), "job_id": job_id}).scalar_one_or_none()
    if left is not None and left <= 0:
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            maybe_finalize(session, job)


def recount(session: Session, job: Job) -> None:
    """Recompute the job's counts from its rows: a repair (``jobs recount``) and what a
    retry does; the pipeline itself only moves counts by each chunk's outcome."""
    rows = session.exec(
        select(Request.status, func.count()).where(Request.job_id == job.id)
        .group_by(Request.status)
    ).all()
    by_status = dict(rows)
    job.total = sum(by_status.values())
    job.completed = by_status.get(RequestStatus.COMPLETED, 0)
    job.failed = by_status.get(RequestStatus.FAILED, 0)
    job.chunks_left = session.exec(
        select(func.count()).select_from(Chunk)
        .where(Chunk.job_id == job.id, col(Chunk.status).in_(ACTIVE_CHUNK_STATUSES))
    ).one()
    session.add(job)


def maybe_finalize(session: Session, job: Job) -> None:
    """Close the job when none of its chunks can still run (the caller holds its lock)."""
    if job.status not in (JobStatus.IN_PROGRESS, JobStatus.CANCELLING):
        return
    if job.chunks_left > 0:
        return
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
    job.chunks_left -= _stop_unstarted(session, job_id, "job cancelled before this chunk started")
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
        job.chunks_left -= _stop_unstarted(session, job_id, "job expired before this chunk started")
        session.add(job)
        expired.append(job_id)
    return expired


def _stop_unstarted(session: Session, job_id: str, reason: str) -> int:
    """Drop the job's unpublished canvases and cancel every chunk no task has started;
    returns how many chunks it cancelled."""
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
    return len(waiting)


def _cancel_chunks(session: Session, chunks: list[Chunk],
                   reason: str = "job cancelled before this chunk started") -> None:
    if not chunks:
        return
    now = utcnow()
    for chunk in chunks:
        chunk.status = ChunkStatus.CANCELLED
        chunk.finished_at = now
        chunk.lease_until = None
        session.add(chunk)
    session.execute(
        update(Request)
        .where(col(Request.chunk_id).in_([c.id for c in chunks]),
               col(Request.status) == RequestStatus.PENDING)
        .values(status=RequestStatus.CANCELLED, error=reason)
    )
    session.flush()
