"""A batch's file is validated after its create has answered, as the Batch API does: the
batch is ``validating`` until its lines are checked, then ``in_progress`` (its requests
stored and their canvases in the outbox) or ``failed`` with an error per line.

The server validates right after answering (a background task of the create). Should that
process stop first, whoever reads the batch next validates it: a batch never stays
``validating`` because one server process went away. The row lock (SKIP LOCKED for readers)
lets one of them do it.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from celery import Celery
from sqlmodel import Session, select

from db.engine import session_scope
from db.models import BatchFile, Job, JobStatus, utcnow
from ops.api.model_names import ModelCheck
from orchestration.lifecycle import transition
from orchestration.registry import Registry
from orchestration.submission import validate_job

log = structlog.get_logger(__name__)


def file_lines(content: bytes) -> Iterator[bytes]:
    """The lines of an upload, each with its terminator, without copying the file whole."""
    start = 0
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end + 1
        yield content[start:end]
        start = end


def validate_batch(session: Session, app: Celery, registry: Registry, job_id: str, *,
                   wait: bool) -> None:
    """Validate the batch if it is still ``validating``; ``wait`` False passes over a
    batch another caller is validating right now."""
    # populate_existing: the caller may hold this row from before the lock, and another
    # process may have validated it since; the locked read must win.
    query = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    query = query.with_for_update() if wait else query.with_for_update(skip_locked=True)
    job = session.exec(query).one_or_none()
    if job is None or job.status != JobStatus.VALIDATING:
        return
    source = session.get(BatchFile, job.input_file) if job.input_file else None
    if source is None or source.content is None:
        transition(job, JobStatus.FAILED, utcnow())
        job.errors = [{"line": 0, "field": "(file)", "code": "invalid_file",
                       "message": "the input file was deleted before the batch was "
                                  "validated"}]
        session.add(job)
        return
    validate_job(session, app, job, file_lines(source.content),
                 ModelCheck(registry, list(job.models)))
    log.info("api.batch.validated", job_id=job.id, status=job.status, requests=job.total)


def validate_later(database_url: str, app: Celery, registry: Registry, job_id: str) -> None:
    """The create's background task, in a transaction of its own."""
    with session_scope(database_url) as session:
        validate_batch(session, app, registry, job_id, wait=True)
