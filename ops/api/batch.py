"""The OpenAI Batch API: files and batches. Point the official ``openai`` client at
``<server>/v1``.

blendq's own options come from the batch's metadata (``blendq.models``, ``blendq.ranker``,
``blendq.fuser``, ``blendq.top_k``, ``blendq.strategy``, ``blendq.aggregation``,
``blendq.chunk_size``), else the tenant's defaults (``manage.py tenants set-defaults``),
else the registry's. The lines' ``body.model`` names the ensemble (ops/api/model_names.py).

A batch answers its create as ``validating``; its file is validated right after
(ops/api/batch_validation.py).
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from pydantic import ConfigDict, Field
from sqlmodel import Session

from db.models import ApiRole, Job, JobStatus, Tenant
from db.queries_api import job_tokens, jobs_page, tenant_batch, tenant_file
from ops.api import batch_files
from ops.api.batch_objects import CHAT_ENDPOINT, COMPLETION_WINDOW, INPUT, batch_object, list_object
from ops.api.batch_results import result_files
from ops.api.batch_validation import file_lines, validate_batch, validate_later
from ops.api.deps import DB, Principal, registry_of, require, settings_of
from ops.api.errors import ERROR_RESPONSES, ApiError, not_found
from ops.api.idempotency import BATCH_PREFIX, idempotency_key, mark_replayed
from ops.api.model_names import first_model, generator_set
from ops.api.options import METADATA_PREFIX, OptionError, from_metadata, job_options
from ops.api.public_ids import request_ids
from ops.api.text_checks import CleanBody
from orchestration.lifecycle import cancel_job
from orchestration.submission import find_existing, submit

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1", tags=["openai-batch"], responses=ERROR_RESPONSES)
router.include_router(batch_files.router)
READ = require(ApiRole.SUBMITTER, ApiRole.AUDITOR)
WRITE = require(ApiRole.SUBMITTER)
# The Batch API's limits on metadata.
MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512


class BatchCreate(CleanBody):
    # Fields OpenAI may add later (output_expires_after, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=200)
    completion_window: str = Field(max_length=200)
    metadata: dict[str, str] | None = None


def batch_view(request: Request, session: Session, job: Job) -> dict[str, Any]:
    """The batch object; reading a finished batch makes its output and error file rows,
    reading one still ``validating`` validates it (unless another caller is)."""
    if job.status == JobStatus.VALIDATING:
        validate_batch(session, request.app.state.celery, registry_of(request),
                       job.id, wait=False)
    ids = request_ids(settings_of(request).database_url)
    return batch_object(job, *result_files(session, job, ids),
                        tokens=job_tokens(session, job.id))


def _batch(session: Session, principal: Principal, batch_id: str) -> Job:
    job = tenant_batch(session, principal.tenant, batch_id)
    if job is None:
        raise not_found("batch", batch_id)
    return job


@router.post("/batches", summary="Create a batch from an uploaded file")
def create_batch(body: BatchCreate, request: Request, response: Response,
                 background: BackgroundTasks, principal: Principal = Depends(WRITE),
                 session: Session = DB,
                 key: str | None = Depends(idempotency_key)) -> dict[str, Any]:
    stored_key = None if key is None else BATCH_PREFIX + key
    earlier = find_existing(session, principal.tenant, stored_key)
    if earlier is not None:
        mark_replayed(response)
        return batch_view(request, session, earlier)
    _check(body)
    source = tenant_file(session, principal.tenant, body.input_file_id)
    if source is None:
        raise ApiError(404, f"No file found with id '{body.input_file_id}'.",
                       param="input_file_id", code="not_found")
    if source.purpose != INPUT or source.content is None:
        raise ApiError(400, f"input_file_id: file '{source.id}' has purpose "
                            f"'{source.purpose}'; a batch reads a file uploaded with "
                            f"purpose '{INPUT}'.", param="input_file_id",
                       code="invalid_input_file")
    tenant = session.get(Tenant, principal.tenant)
    settings = settings_of(request)
    registry = registry_of(request)
    metadata = body.metadata or {}
    given = from_metadata(metadata)
    if "models" not in given:
        # No models in the metadata: the set the file's first model names (the alias, or
        # a set naming an unknown model, keeps the defaults; validation reports those).
        named = first_model(file_lines(source.content))
        names = None if named is None else generator_set(registry, named)
        if names:
            given["models"] = names
    try:
        options = job_options(given, "metadata." + METADATA_PREFIX,
                              tenant.defaults if tenant else {}, registry,
                              chunk_size=settings.chunk_size, tenant=principal.tenant,
                              idempotency_key=stored_key, metadata=dict(metadata))
    except OptionError as exc:
        raise ApiError(400, str(exc), param=exc.param, code="invalid_option") from None
    submitted = submit(session, request.app.state.celery, (), options, registry,
                       input_file=source.id, defer=True)
    if not submitted.created:
        mark_replayed(response)
        return batch_view(request, session, submitted.job)
    log.info("api.batch.created", job_id=submitted.job.id, tenant=principal.tenant,
             key_id=principal.key_id, input_file_id=source.id)
    # After the response, once this transaction has committed (the DB dependency commits
    # before the response is sent).
    background.add_task(validate_later, settings.database_url, request.app.state.celery,
                        registry, submitted.job.id)
    return batch_object(submitted.job)


def _check(body: BatchCreate) -> None:
    if body.endpoint != CHAT_ENDPOINT:
        raise ApiError(400, f"endpoint: blendq serves only {CHAT_ENDPOINT}, got "
                            f"{body.endpoint!r}.", param="endpoint", code="invalid_endpoint")
    if body.completion_window != COMPLETION_WINDOW:
        raise ApiError(400, f"completion_window: must be {COMPLETION_WINDOW!r}, got "
                            f"{body.completion_window!r}.", param="completion_window",
                       code="invalid_completion_window")
    metadata = body.metadata or {}
    if len(metadata) > MAX_PAIRS:
        raise ApiError(400, f"metadata: at most {MAX_PAIRS} pairs.", param="metadata")
    for name, value in metadata.items():
        if len(name) > MAX_KEY or len(value) > MAX_VALUE:
            raise ApiError(400, f"metadata.{name[:MAX_KEY]}: keys are at most {MAX_KEY} "
                                f"characters and values at most {MAX_VALUE}.",
                           param=f"metadata.{name[:MAX_KEY]}")


@router.get("/batches", summary="The tenant's batches, newest first")
def list_batches(request: Request, after: str | None = Query(None, max_length=64),
                 limit: int = Query(20, ge=1, le=100),
                 principal: Principal = Depends(READ),
                 session: Session = DB) -> dict[str, Any]:
    page = jobs_page(session, principal.tenant, after=after, limit=limit,
                     batches_only=True)
    return list_object([batch_view(request, session, job) for job in page.rows],
                       page.has_more)


@router.get("/batches/{batch_id}", summary="One batch")
def get_batch(request: Request, batch_id: str, principal: Principal = Depends(READ),
              session: Session = DB) -> dict[str, Any]:
    return batch_view(request, session, _batch(session, principal, batch_id))


@router.post("/batches/{batch_id}/cancel",
             summary="Cancel a batch: no new request starts; running ones finish and keep "
                     "their results. A finished batch is returned as it is.")
def cancel_batch(request: Request, batch_id: str, principal: Principal = Depends(WRITE),
                 session: Session = DB) -> dict[str, Any]:
    job = cancel_job(session, _batch(session, principal, batch_id).id)
    assert job is not None  # the row was just read and jobs are never deleted
    log.info("api.batch.cancel", job_id=job.id, tenant=principal.tenant,
             key_id=principal.key_id, status=job.status)
    return batch_view(request, session, job)
