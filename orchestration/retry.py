"""``jobs retry``: run a finished job's failed requests again, and nothing else.

What a retry does, in one transaction:

- each failed request goes back to ``pending`` (error, chosen candidate and fused output
  cleared); completed and cancelled requests are not touched;
- the *failed* candidate rows of those requests are deleted, because the generate stage
  fills only missing (request, model) pairs and a stored failure would block the retry.
  Good candidates stay, so a model that worked is not run again; comparisons stay too (the
  ranker computes only the pairs it has not stored). Their rankings and fusions are
  deleted: both are derived, and a ranking made without the regenerated candidate would
  otherwise win the unique key and keep the stale choice;
- every chunk holding such a request goes back to ``pending`` and gets a new canvas in the
  outbox (a new dedup key per retry, since the first one is already used); stages work
  only on a chunk's pending requests, so its completed ones stay as they are;
- the job goes back to ``in_progress`` with a fresh completion window, and the retry is
  recorded in its metadata (``retries``: when, how many requests).

This reopening is an admin act outside the Batch API's state machine, so it sets the
status directly instead of going through ``lifecycle.transition``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from db.models import (
    TERMINAL_JOB_STATUSES,
    Candidate,
    Chunk,
    ChunkStage,
    ChunkStatus,
    Comparison,
    Fusion,
    Job,
    JobStatus,
    Ranking,
    Request,
    RequestStatus,
    utcnow,
)
from orchestration import lifecycle, outbox
from orchestration.canvas import chunk_canvas, to_payload

WINDOW = timedelta(hours=24)


class RetryError(ValueError):
    pass


def retry_failed(session: Session, app: Celery, job_id: str) -> dict[str, Any]:
    """Re-queue the job's failed requests; the caller commits. Returns what was done."""
    job = lifecycle.lock_job(session, job_id)
    if job is None:
        raise RetryError(f"no job {job_id}")
    if JobStatus(job.status) not in TERMINAL_JOB_STATUSES:
        raise RetryError(f"job {job_id} is {job.status}; retry a job once it has ended")
    failed = session.exec(select(Request.id, Request.chunk_id).where(
        Request.job_id == job_id, Request.status == RequestStatus.FAILED)).all()
    if not failed:
        return {"job_id": job_id, "requests": 0, "chunks": 0, "status": job.status}
    request_ids = [rid for rid, _ in failed]
    chunk_ids = sorted({cid for _, cid in failed if cid is not None})
    failed_candidates = (select(Candidate.id)
                         .where(col(Candidate.request_id).in_(request_ids),
                                col(Candidate.ok).is_(False)))
    # Comparisons name candidates without a foreign key (migration 0011): nothing else
    # would take a deleted candidate's rows with it.
    session.execute(delete(Comparison).where(
        col(Comparison.request_id).in_(request_ids),
        or_(col(Comparison.candidate_a_id).in_(failed_candidates),
            col(Comparison.candidate_b_id).in_(failed_candidates))))
    session.execute(delete(Candidate).where(col(Candidate.request_id).in_(request_ids),
                                            col(Candidate.ok).is_(False)))
    session.execute(delete(Ranking).where(col(Ranking.request_id).in_(request_ids)))
    session.execute(delete(Fusion).where(col(Fusion.request_id).in_(request_ids)))
    session.execute(update(Request).where(col(Request.id).in_(request_ids)).values(
        status=RequestStatus.PENDING, error=None, chosen_candidate_id=None, fused_output=None,
        completed_at=None))
    session.execute(update(Chunk).where(col(Chunk.id).in_(chunk_ids)).values(
        status=ChunkStatus.PENDING, started_at=None, finished_at=None, lease_until=None,
        stage=ChunkStage.GENERATE, sweeps=0, epoch=col(Chunk.epoch) + 1))
    now = utcnow()
    meta = dict(job.meta or {})
    retries = [*meta.get("retries", []), {"at": now.isoformat(), "requests": len(request_ids)}]
    meta["retries"] = retries
    _reopen(job, now)
    job.meta = meta
    lifecycle.recount(session, job)
    session.flush()
    for chunk_id in chunk_ids:
        canvas = chunk_canvas(app, job.id, chunk_id, list(job.models))
        outbox.add(session, outbox.KIND_CANVAS, to_payload(canvas), job_id=job.id,
                   chunk_id=chunk_id, dedup_key=f"chunk:{chunk_id}:retry:{len(retries)}")
    return {"job_id": job_id, "requests": len(request_ids), "chunks": len(chunk_ids),
            "status": job.status}


def _reopen(job: Job, now: Any) -> None:
    job.status = JobStatus.IN_PROGRESS
    job.in_progress_at = now
    for stamp in ("finalizing_at", "completed_at", "failed_at", "expired_at",
                  "cancelling_at", "cancelled_at"):
        setattr(job, stamp, None)
    job.expires_at = now + WINDOW
