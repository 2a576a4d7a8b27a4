"""A batch's output and error files: rows made once its job has finished, whose content is
rendered from the stored results each time it is downloaded (so it always agrees with the
audit trail, and a large job streams instead of being held in memory).

The rows are made when the batch is first read after its job finished, not by the workers
(which know nothing of the HTTP API). Their ids derive from the job id, so two readers at
once make one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from db.models import (
    ACTIVE_CHUNK_STATUSES,
    TERMINAL_JOB_STATUSES,
    BatchFile,
    Chunk,
    Job,
    JobStatus,
    RequestStatus,
    utcnow,
)
from db.queries import result_rows
from db.writes import insert_ignore
from ops.api.batch_objects import ERROR, OUTPUT, error_line, jsonl, output_line
from ops.api.public_ids import RequestIds

ANSWERED = (RequestStatus.COMPLETED,)
UNANSWERED = (RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.PENDING)


def result_file_id(job: Job, purpose: str) -> str:
    return f"file-{'output' if purpose == OUTPUT else 'errors'}-{job.id.removeprefix('job_')}"


def finished(session: Session, job: Job) -> bool:
    """Whether the job's results can no longer change. An expired job's running chunks
    still finish after it expired, and their answers belong in its output."""
    if JobStatus(job.status) not in TERMINAL_JOB_STATUSES:
        return False
    if job.status != JobStatus.EXPIRED:
        return True
    running = session.exec(select(func.count()).select_from(Chunk).where(
        Chunk.job_id == job.id, col(Chunk.status).in_(ACTIVE_CHUNK_STATUSES))).one()
    return running == 0


def result_files(session: Session, job: Job,
                 ids: RequestIds) -> tuple[str | None, str | None]:
    """(output_file_id, error_file_id) of a finished batch, making their rows if needed;
    None where a file would be empty, as in the Batch API."""
    if not finished(session, job):
        return None, None
    answered = job.completed
    unanswered = job.total - job.completed
    return (_ensure(session, job, OUTPUT, ids) if answered else None,
            _ensure(session, job, ERROR, ids) if unanswered else None)


def _ensure(session: Session, job: Job, purpose: str, ids: RequestIds) -> str:
    file_id = result_file_id(job, purpose)
    row = session.get(BatchFile, file_id)
    ended = _ended_at(job)
    if row is not None and (ended is None or row.created_at >= ended):
        return file_id
    # New, or made before an admin's `jobs retry` reopened the job: (re)measure it.
    size = sum(len(chunk) for chunk in render(session, job, purpose, ids))
    now = utcnow()
    if row is None:
        insert_ignore(session, BatchFile, [{
            "id": file_id, "tenant": job.tenant, "purpose": purpose, "size": size,
            "filename": f"{job.id}_{'output' if purpose == OUTPUT else 'error'}.jsonl",
            "content": None, "job_id": job.id, "created_at": now}])
    else:
        row.size, row.created_at = size, now
        session.add(row)
    return file_id


def _ended_at(job: Job) -> datetime | None:
    stamps = [s for s in (job.completed_at, job.failed_at, job.cancelled_at, job.expired_at)
              if s is not None]
    return max(stamps, default=None)


def render(session: Session, job: Job, purpose: str, ids: RequestIds) -> Iterator[bytes]:
    """The file's JSONL, line by line, in input order."""
    if purpose == OUTPUT:
        for request, result in result_rows(session, job.id, ANSWERED):
            yield jsonl(output_line(job, request, result, ids.encode(request.id or 0)))
    else:
        for request, _result in result_rows(session, job.id, UNANSWERED):
            yield jsonl(error_line(job, request, ids.encode(request.id or 0)))
