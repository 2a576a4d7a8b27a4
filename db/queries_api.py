"""Reads and writes behind the HTTP API, every one scoped to the caller's tenant.

Another tenant's object reads exactly as an absent one: the API answers 404 for both, so
no id of another tenant is ever confirmed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from db.models import ApiSecret, BatchFile, Candidate, IdempotencyKey, Job, Request, utcnow
from db.writes import insert_ignore

# A batch is a job made from an uploaded file: its input_file is that file's id, a shape
# no path that `jobs submit` records is likely to have.
UPLOAD_ID = r"^file-[0-9a-f]{32}$"


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    has_more: bool


def tenant_job(session: Session, tenant: str, job_id: str) -> Job | None:
    job = session.get(Job, job_id)
    return job if job is not None and job.tenant == tenant else None


def job_tokens(session: Session, job_id: str) -> tuple[int, int]:
    """(prompt, completion) tokens of every candidate the job's generators produced."""
    prompt, completion = session.exec(
        select(func.coalesce(func.sum(Candidate.prompt_tokens), 0),
               func.coalesce(func.sum(Candidate.completion_tokens), 0))
        .join(Request, col(Request.id) == Candidate.request_id)
        .where(Request.job_id == job_id, col(Candidate.ok))).one()
    return int(prompt), int(completion)


def tenant_batch(session: Session, tenant: str, batch_id: str) -> Job | None:
    job = tenant_job(session, tenant, batch_id)
    return job if job is not None and is_batch(job) else None


def is_batch(job: Job) -> bool:
    return re.match(UPLOAD_ID, job.input_file or "") is not None


def tenant_file(session: Session, tenant: str, file_id: str) -> BatchFile | None:
    found = session.get(BatchFile, file_id)
    return found if found is not None and found.tenant == tenant else None


def tenant_request(session: Session, tenant: str, request_id: int) -> Request | None:
    request = session.get(Request, request_id)
    if request is None or tenant_job(session, tenant, request.job_id) is None:
        return None
    return request


class UnknownCursor(LookupError):
    """``after`` names no object of this tenant's list (the API answers 400)."""

    def __init__(self, after: str, noun: str) -> None:
        super().__init__(f"after: no {noun} '{after}' in this list.")


def jobs_page(session: Session, tenant: str, *, after: str | None, limit: int,
              batches_only: bool = False, status: str | None = None) -> Page:
    """The tenant's jobs, newest first, ``limit`` of them after the job ``after``."""
    query = select(Job).where(Job.tenant == tenant)
    if batches_only:
        query = query.where(col(Job.input_file).regexp_match(UPLOAD_ID))
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        cursor = tenant_batch(session, tenant, after) if batches_only else tenant_job(
            session, tenant, after)
        if cursor is None:
            raise UnknownCursor(after, "batch" if batches_only else "job")
        query = query.where(tuple_(col(Job.created_at), col(Job.id))
                            < tuple_(cursor.created_at, cursor.id))
    query = query.order_by(col(Job.created_at).desc(), col(Job.id).desc())
    return _page(list(session.exec(query.limit(limit + 1)).all()), limit)


def files_page(session: Session, tenant: str, *, after: str | None, limit: int,
               descending: bool = True, purposes: Sequence[str] | None = None) -> Page:
    query = select(BatchFile).where(BatchFile.tenant == tenant)
    if purposes is not None:
        query = query.where(col(BatchFile.purpose).in_(list(purposes)))
    key = tuple_(col(BatchFile.created_at), col(BatchFile.id))
    if after is not None:
        cursor = tenant_file(session, tenant, after)
        if cursor is None:
            raise UnknownCursor(after, "file")
        edge = tuple_(cursor.created_at, cursor.id)
        query = query.where(key < edge if descending else key > edge)
    order: Sequence[Any] = ((col(BatchFile.created_at).desc(), col(BatchFile.id).desc())
                            if descending else (col(BatchFile.created_at), col(BatchFile.id)))
    return _page(list(session.exec(query.order_by(*order).limit(limit + 1)).all()), limit)


def _page(rows: list[Any], limit: int) -> Page:
    return Page(rows[:limit], has_more=len(rows) > limit)


# -- idempotency keys of files and labels ---------------------------------------------------
def remembered(session: Session, tenant: str, scope: str, key: str) -> str | None:
    """The id of what ``key`` already created, or None."""
    row = session.get(IdempotencyKey, (tenant, scope, key))
    return row.resource_id if row is not None else None


def remember(session: Session, tenant: str, scope: str, key: str,
             create: Callable[[], str]) -> str | None:
    """Run ``create`` (which stores an object and returns its id) and record ``key`` for
    it, in one savepoint.

    Returns None when this call won; else the id that a concurrent request with the same
    key committed first, and what ``create`` stored is rolled back with the savepoint.
    """
    try:
        with session.begin_nested():
            resource_id = create()
            session.add(IdempotencyKey(tenant=tenant, scope=scope, key=key,
                                       resource_id=resource_id))
            session.flush()
    except IntegrityError:
        winner = remembered(session, tenant, scope, key)
        if winner is None:
            raise
        return winner
    return None


# -- secrets the server processes share ------------------------------------------------------
def shared_secret(session: Session, name: str, size: int = 32) -> bytes:
    """The secret ``name``, made on first use; every process reads the one that won."""
    found = session.get(ApiSecret, name)
    if found is None:
        insert_ignore(session, ApiSecret, [{"name": name, "value": secrets.token_bytes(size),
                                            "created_at": utcnow()}])
        session.flush()
        found = session.get(ApiSecret, name)
        assert found is not None  # inserted, or another process's row won
    return bytes(found.value)
