"""Reads every stage needs: the chunk's open requests and their candidates, and the request
updates they end with."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import bindparam, text, update
from sqlalchemy import select as select_rows
from sqlmodel import Session, col, select

from db import core
from db.models import Request, RequestStatus
from db.writes import bulk_update
from orchestration import lifecycle


class OpenRequest(NamedTuple):
    """What ranking reads of a request: a plain row, not an ORM object."""

    id: int
    job_id: str
    instruction: str
    input: str


def open_requests_of(session: Session, chunk_ids: list[int]) -> list[OpenRequest]:
    """The open requests of ``chunk_ids``, in id order, in one query."""
    if not chunk_ids:
        return []
    r = core.request.c
    rows = session.execute(
        select_rows(r.id, r.job_id, r.instruction, r.input)
        .where(r.chunk_id.in_(chunk_ids), r.status == RequestStatus.PENDING)
        .order_by(r.id)).all()
    return [OpenRequest(*row) for row in rows]


class StageJob(NamedTuple):
    """What ranking and fusion read of a job."""

    id: str
    ranker: str | None
    fuser: str | None
    strategy: str
    aggregation: str
    top_k: int


_STAGE_JOBS = text("SELECT id, ranker, fuser, strategy, aggregation, top_k FROM job "
                   "WHERE id IN :job_ids").bindparams(bindparam("job_ids", expanding=True))


def stage_jobs(session: Session, job_ids: list[str]) -> dict[str, StageJob]:
    if not job_ids:
        return {}
    return {row[0]: StageJob(*row)
            for row in session.execute(_STAGE_JOBS, {"job_ids": sorted(set(job_ids))})}


def open_requests(session: Session, chunk_id: int) -> list[Request]:
    return list(session.exec(
        select(Request)
        .where(Request.chunk_id == chunk_id, Request.status == RequestStatus.PENDING)
        .order_by(col(Request.id))
    ).all())


class StoredCandidate(NamedTuple):
    """What ranking reads of a candidate: a plain row, not an ORM object."""

    id: int
    request_id: int
    model: str
    ok: bool
    text: str
    error: str | None


def candidates_by_request(session: Session,
                          request_ids: list[int]) -> dict[int, list[StoredCandidate]]:
    """Every stored candidate, failed ones included, in model-name order per request."""
    found: dict[int, list[StoredCandidate]] = {rid: [] for rid in request_ids}
    if not request_ids:
        return found
    k = core.candidate.c
    rows = session.execute(
        select_rows(k.id, k.request_id, k.model, k.ok, k.text, k.error)
        .where(core.among(session, k.request_id, request_ids)).order_by(k.request_id, k.model)
    ).all()
    for row in rows:
        found[row.request_id].append(StoredCandidate(*row))
    return found


def candidate_texts(session: Session, candidate_ids: list[int]) -> dict[int, str]:
    if not candidate_ids:
        return {}
    k = core.candidate.c
    rows = session.execute(select_rows(k.id, k.text)
                           .where(core.among(session, k.id, candidate_ids))).all()
    return {candidate_id: text for candidate_id, text in rows}


def source_text(request: Request | OpenRequest) -> str:
    """What the ranker and fuser see as the prompt."""
    return f"{request.instruction}\n{request.input}" if request.input else request.instruction


def update_requests(session: Session, rows: list[dict[str, Any]]) -> None:
    """Set columns of many requests at once: each row is ``{"id": ..., column: value}``,
    one statement for all (db/writes.py)."""
    bulk_update(session, Request, rows)


def fail_requests(session: Session, requests: list[Request], reason: str) -> None:
    lifecycle.keep_ranked_choice(session, [r.id for r in requests if r.id is not None])
    for request in requests:
        request.status = RequestStatus.FAILED
        request.error = reason
        session.add(request)


def fail_open(session: Session, request_ids: list[int], reason: str) -> None:
    """Fail the requests of ``request_ids`` that are still open, in one statement."""
    if request_ids:
        lifecycle.keep_ranked_choice(session, request_ids)
        r = core.request.c
        session.execute(
            update(core.request)
            .where(r.id.in_(request_ids), r.status == RequestStatus.PENDING)
            .values(status=RequestStatus.FAILED, error=reason))


def storable(text: str) -> str:
    """Model output as Postgres can store it: text columns refuse NUL characters."""
    return text.replace("\x00", "")
