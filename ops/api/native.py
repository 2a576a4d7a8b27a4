"""blendq's native API: inline jobs, status, streamed results, audit and labels.

A job's requests travel in the JSON body, one object per request in the same shapes a
JSONL file for ``manage.py jobs submit`` holds (native or OpenAI Batch lines); they are
validated whole, as a file is: a job with bad requests is stored as ``failed`` with an
error per line and field, and nothing of it runs. The body is read as it arrives
(ops/api/json_stream.py): the request past the cap is refused before the rest is read.

Request ids are shown opaque (``req_…``, ops/api/public_ids.py), never the database's
sequence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from db.engine import session_scope
from db.models import ApiRole, Job, JobStatus, Tenant
from db.queries import job_summary, result_lines
from db.queries_api import jobs_page, tenant_job
from ops.api import native_audit
from ops.api.batch_objects import list_object
from ops.api.deps import DB, Principal, registry_of, require, settings_of
from ops.api.errors import ERROR_RESPONSES, ApiError, body, not_found
from ops.api.idempotency import REPLAY_RESPONSE, idempotency_key, mark_replayed
from ops.api.json_stream import BodyError, JobBody, read_job_body
from ops.api.model_names import ModelCheck
from ops.api.options import OptionError, job_options
from ops.api.public_ids import RequestIds, request_ids
from ops.api.text_checks import BadText, check_json, json_size
from orchestration.lifecycle import cancel_job
from orchestration.submission import find_existing, submit

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1", tags=["native"], responses=ERROR_RESPONSES)
router.include_router(native_audit.router)
ANY_ROLE = require(ApiRole.SUBMITTER, ApiRole.AUDITOR)
SUBMIT = require(ApiRole.SUBMITTER)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[Any] = Field(min_length=1, description=(
        "One object per request: {custom_id, instruction, input, params} or an OpenAI "
        "Batch line {custom_id, method, url, body}."))
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "models (list or comma-separated), ranker, fuser ('none': keep the top "
        "candidate), top_k, strategy, aggregation, chunk_size; unset ones come from the "
        "tenant's defaults, then the registry's."))
    metadata: dict[str, Any] | None = None


# The job's own metadata, as JSON (each request may carry its own, as bounded).
MAX_JOB_METADATA_BYTES = 16_384


@router.get("/me", summary="The calling key: its id, tenant and role")
def me(principal: Principal = Depends(ANY_ROLE)) -> dict[str, Any]:
    return {"key_id": principal.key_id, "tenant": principal.tenant, "role": principal.role}


def _job(session: Session, principal: Principal, job_id: str) -> Job:
    job = tenant_job(session, principal.tenant, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post("/jobs", status_code=201, summary="Submit a job with its requests inline",
             responses=REPLAY_RESPONSE,
             # The body is read as it streams, not by FastAPI: documented here instead.
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": JobCreate.model_json_schema()}}}})
async def create_job(request: Request, response: Response,
                     principal: Principal = Depends(SUBMIT), session: Session = DB,
                     key: str | None = Depends(idempotency_key)) -> Any:
    # The key and role are checked (dependencies) before a byte of the body is read.
    try:
        given = await read_job_body(request.stream())
        for name, value in (("options", given.options), ("metadata", given.metadata)):
            check_json(value, name)
    except BodyError as exc:
        return JSONResponse(body(exc.status, exc.message, exc.param, exc.code),
                            status_code=exc.status)
    except BadText as exc:
        return JSONResponse(body(400, str(exc), exc.where), status_code=400)
    if given.metadata is not None and json_size(given.metadata) > MAX_JOB_METADATA_BYTES:
        return JSONResponse(body(400, f"metadata: larger than {MAX_JOB_METADATA_BYTES} "
                                      "bytes as JSON.", "metadata"), status_code=400)
    return await run_in_threadpool(_create_job, request, response, principal, session, key,
                                   given)


def _create_job(request: Request, response: Response, principal: Principal,
                session: Session, key: str | None, given: JobBody) -> dict[str, Any]:
    earlier = find_existing(session, principal.tenant, key)
    if earlier is not None:
        return _replayed(session, earlier, response)
    tenant = session.get(Tenant, principal.tenant)
    settings = settings_of(request)
    registry = registry_of(request)
    try:
        options = job_options(given.options, "options.", tenant.defaults if tenant else {},
                              registry, chunk_size=settings.chunk_size,
                              tenant=principal.tenant, idempotency_key=key,
                              metadata=given.metadata)
    except OptionError as exc:
        raise ApiError(400, str(exc), param=exc.param, code="invalid_option") from None
    submitted = submit(session, request.app.state.celery, given.lines, options, registry,
                       check=ModelCheck(registry, options.models))
    if not submitted.created:
        return _replayed(session, submitted.job, response)
    log.info("api.job.created", job_id=submitted.job.id, tenant=principal.tenant,
             key_id=principal.key_id)
    return job_summary(session, submitted.job)


def _replayed(session: Session, job: Job, response: Response) -> dict[str, Any]:
    response.status_code = 200
    mark_replayed(response)
    return job_summary(session, job)


@router.get("/jobs", summary="The tenant's jobs, newest first")
def list_jobs(after: str | None = Query(None, max_length=64),
              limit: int = Query(20, ge=1, le=100),
              status: JobStatus | None = None, principal: Principal = Depends(ANY_ROLE),
              session: Session = DB) -> dict[str, Any]:
    page = jobs_page(session, principal.tenant, after=after, limit=limit,
                     status=None if status is None else status.value)
    return list_object([job_summary(session, job) for job in page.rows], page.has_more)


@router.get("/jobs/{job_id}", summary="A job's status, counts and errors")
def get_job(job_id: str, principal: Principal = Depends(ANY_ROLE),
            session: Session = DB) -> dict[str, Any]:
    return job_summary(session, _job(session, principal, job_id))


@router.get("/jobs/{job_id}/results", response_class=StreamingResponse,
            summary="One JSON line per request, in input order (partial while running)")
def job_results(job_id: str, request: Request, principal: Principal = Depends(ANY_ROLE),
                session: Session = DB) -> StreamingResponse:
    _job(session, principal, job_id)
    url = settings_of(request).database_url
    return StreamingResponse(_results(url, job_id, request_ids(url)),
                             media_type="application/jsonl; charset=utf-8")


def _results(url: str, job_id: str, ids: RequestIds) -> Iterator[bytes]:
    # Its own session, paged by result_lines: the request's session is closed before the
    # body is sent, and a large job is never held whole.
    with session_scope(url) as session:
        for line in result_lines(session, job_id):
            line["request_id"] = ids.encode(line["request_id"])
            yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


@router.post("/jobs/{job_id}/cancel",
             summary="Start no new chunk; running chunks finish and keep their results")
def cancel(job_id: str, principal: Principal = Depends(SUBMIT),
           session: Session = DB) -> dict[str, Any]:
    job = cancel_job(session, _job(session, principal, job_id).id)
    assert job is not None  # the row was just read and jobs are never deleted
    log.info("api.job.cancel", job_id=job.id, tenant=principal.tenant,
             key_id=principal.key_id, status=job.status)
    return job_summary(session, job)
