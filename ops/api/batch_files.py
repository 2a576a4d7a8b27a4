"""``/v1/files``: the Batch API's files. Uploads (purpose ``batch``) keep their bytes; a
batch's output and error files are rendered from the stored results when downloaded.

An upload is checked as UTF-8 JSONL when it arrives (a leading byte-order mark allowed):
a binary or truncated file is refused then, naming its first bad line, rather than
accepted and failing later as a batch. Each line's fields are validated when a batch is
made from it."""

from __future__ import annotations

import codecs
import json
import uuid
from collections.abc import Iterator
from typing import Any, Literal, NoReturn

import structlog
from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from db.engine import session_scope
from db.models import ApiRole, BatchFile, Job
from db.queries_api import files_page, remember, remembered, tenant_file
from ops.api.batch_objects import ERROR, INPUT, OUTPUT, file_object, list_object
from ops.api.batch_results import render
from ops.api.batch_validation import file_lines
from ops.api.deps import DB, Principal, require, settings_of
from ops.api.errors import ERROR_RESPONSES, ApiError, not_found
from ops.api.idempotency import idempotency_key, mark_replayed
from ops.api.public_ids import RequestIds, request_ids
from ops.api.text_checks import text_problem

log = structlog.get_logger(__name__)
router = APIRouter(tags=["openai-batch"], responses=ERROR_RESPONSES)
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
    filename = (file.filename or "input.jsonl")[:MAX_FILENAME]
    problem = text_problem(filename)
    if problem is not None:
        raise ApiError(400, f"file: its name {problem}.", param="file", code="invalid_file")
    jsonl_problem(content)
    row = BatchFile(id=new_file_id(), tenant=principal.tenant, purpose=INPUT,
                    filename=filename, size=len(content), content=content)
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


def jsonl_problem(content: bytes) -> None:
    """Refuse (400) content that is not UTF-8 JSONL: one JSON object per non-empty line."""
    lines = 0
    for line_no, raw in enumerate(file_lines(content), start=1):
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _bad_file(f"line {line_no}: not UTF-8 text (byte {exc.start} of the line); "
                      "upload a JSONL file")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except RecursionError:
            _bad_file(f"line {line_no}: JSON nested too deeply")
        except ValueError as exc:
            _bad_file(f"line {line_no}: not valid JSON ({exc})")
        if not isinstance(obj, dict):
            _bad_file(f"line {line_no}: must be a JSON object, one request per line")
        lines += 1
    if lines == 0:
        _bad_file("the file holds no lines; upload one JSON request per line")


def _bad_file(message: str) -> NoReturn:
    raise ApiError(400, f"file: {message}.", param="file", code="invalid_file")


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
def list_files(after: str | None = Query(None, max_length=64),
               limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc",
               purpose: str | None = Query(None, max_length=32),
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
    url = settings_of(request).database_url
    return StreamingResponse(_stream(url, row.job_id, row.purpose, request_ids(url)),
                             media_type="application/jsonl; charset=utf-8")


def _stream(url: str, job_id: str, purpose: str, ids: RequestIds) -> Iterator[bytes]:
    # Its own session: the request's is closed once the route returns, before the body
    # has been sent.
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            yield from render(session, job, purpose, ids)


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
