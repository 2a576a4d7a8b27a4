"""``/v1/files``: the Batch API's files. Uploads (purpose ``batch``) keep their bytes; a
batch's output and error files are rendered from the stored results when downloaded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Literal

import structlog
from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from db.engine import session_scope
from db.models import ApiRole, BatchFile, Job
from db.queries_api import files_page, remember, remembered, tenant_file
from ops.api.batch_objects import ERROR, INPUT, OUTPUT, file_object, list_object
from ops.api.batch_results import render
from ops.api.deps import DB, Principal, require, settings_of
from ops.api.errors import ApiError, not_found
from ops.api.idempotency import idempotency_key, mark_replayed

log = structlog.get_logger(__name__)
router = APIRouter(tags=["openai-batch"])
READ = require(ApiRole.SUBMITTER, ApiRole.AUDITOR)
WRITE = require(ApiRole.SUBMITTER)
SCOPE = "file"
MAX_FILENAME = 1024


def new_file_id() -> str:
    # The shape db.queries_api.UPLOAD_ID recognises batches by.
    return "file-" + uuid.uuid4().hex


def _file(session: Session, principal: Principal, file_id: str) -> BatchFile:
    found = tenant_file(session, principal.tenant, file_id)
    if found is None:
        raise not_found("file", file_id)
    return found


@router.post("/files", summary="Upload a JSONL file of requests (purpose 'batch')")
def upload(response: Response, file: UploadFile = File(...), purpose: str = Form(...),
           principal: Principal = Depends(WRITE), session: Session = DB,
           key: str | None = Depends(idempotency_key)) -> dict[str, Any]:
    if purpose != INPUT:
        raise ApiError(400, f"purpose: blendq accepts only files for the Batch API "
                            f"(purpose '{INPUT}'), got {purpose!r}.", param="purpose",
                       code="invalid_purpose")
    if key is not None:
        earlier = remembered(session, principal.tenant, SCOPE, key)
        if earlier is not None:
            return _replay(session, principal, earlier, response)
    content = file.file.read()
    row = BatchFile(id=new_file_id(), tenant=principal.tenant, purpose=INPUT,
                    filename=(file.filename or "input.jsonl")[:MAX_FILENAME],
                    size=len(content), content=content)
    log.info("api.file.uploaded", file_id=row.id, tenant=principal.tenant,
             key_id=principal.key_id, bytes=row.size)
    if key is None:
        session.add(row)
        return file_object(row)

    def store() -> str:
        session.add(row)
        session.flush()
        return row.id

    winner = remember(session, principal.tenant, SCOPE, key, store)
    if winner is not None:
        return _replay(session, principal, winner, response)
    return file_object(row)


def _replay(session: Session, principal: Principal, file_id: str,
            response: Response) -> dict[str, Any]:
    earlier = tenant_file(session, principal.tenant, file_id)
    if earlier is None:
        raise ApiError(409, "The file made with this Idempotency-Key has been deleted; "
                            "use a new key.", param="Idempotency-Key",
                       code="idempotency_key_reused")
    mark_replayed(response)
    return file_object(earlier)


@router.get("/files", summary="The tenant's files, newest first")
def list_files(after: str | None = None, limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None,
               principal: Principal = Depends(READ),
               session: Session = DB) -> dict[str, Any]:
    purposes = None if purpose is None else (
        [OUTPUT, ERROR] if purpose == OUTPUT else [purpose])
    page = files_page(session, principal.tenant, after=after, limit=limit,
                      descending=order == "desc", purposes=purposes)
    return list_object([file_object(row) for row in page.rows], page.has_more)


@router.get("/files/{file_id}", summary="One file")
def get_file(file_id: str, principal: Principal = Depends(READ),
             session: Session = DB) -> dict[str, Any]:
    return file_object(_file(session, principal, file_id))


@router.get("/files/{file_id}/content", summary="A file's content (JSONL)",
            response_class=Response)
def file_content(request: Request, file_id: str, principal: Principal = Depends(READ),
                 session: Session = DB) -> Response:
    row = _file(session, principal, file_id)
    if row.content is not None:
        return Response(row.content, media_type="application/octet-stream")
    if row.job_id is None or session.get(Job, row.job_id) is None:
        raise not_found("file", file_id)
    return StreamingResponse(_stream(settings_of(request).database_url, row.job_id,
                                     row.purpose),
                             media_type="application/jsonl; charset=utf-8")


def _stream(url: str, job_id: str, purpose: str) -> Iterator[bytes]:
    # Its own session: the request's is closed once the route returns, before the body
    # has been sent.
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            yield from render(session, job, purpose)


@router.delete("/files/{file_id}", summary="Delete an uploaded file")
def delete_file(file_id: str, principal: Principal = Depends(WRITE),
                session: Session = DB) -> dict[str, Any]:
    row = _file(session, principal, file_id)
    if row.purpose != INPUT:
        raise ApiError(400, "A batch's output and error files are rendered from its stored "
                            "results, which the audit trail keeps; they cannot be deleted.",
                       param="file_id", code="file_not_deletable")
    session.delete(row)
    log.info("api.file.deleted", file_id=file_id, tenant=principal.tenant,
             key_id=principal.key_id)
    return {"id": file_id, "object": "file", "deleted": True}
