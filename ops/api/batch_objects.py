"""The objects of the OpenAI Batch API as blendq renders them: files, batches, and the
lines of output and error files. Pure functions of stored rows, so they are tested alone.

A batch is a blendq job: the batch id is the job id (``manage.py jobs results <id>``
works on it), its states and ``request_counts`` are the job's.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from db.models import BatchFile, Job, JobStatus, Request

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# Stored purposes: an uploaded input, the output file and the error file of a batch.
# OpenAI gives both result files the purpose batch_output.
INPUT, OUTPUT, ERROR = "batch", "batch_output", "batch_error"
_STAMPS = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
           "expired_at", "cancelling_at", "cancelled_at")


def unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def file_object(row: BatchFile) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.size, "created_at": unix(row.created_at),
            "filename": row.filename, "purpose": OUTPUT if row.purpose == ERROR else row.purpose,
            "status": "processed", "expires_at": None, "status_details": None}


def batch_metadata(job: Job) -> dict[str, str] | None:
    # The job's metadata also records admin retries (lists); a batch's metadata is the
    # client's string pairs only.
    pairs = {k: v for k, v in (job.meta or {}).items() if isinstance(v, str)}
    return pairs or None


def model_name(job: Job) -> str:
    return "blendq:" + "+".join(job.models)


def batch_object(job: Job, output_file_id: str | None = None,
                 error_file_id: str | None = None,
                 tokens: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """``tokens``: (prompt, completion) of every candidate so far, the sum of what the
    output lines' ``usage`` report, plus the candidates of requests that failed later."""
    prompt, completion = tokens
    return {
        "id": job.id, "object": "batch", "endpoint": CHAT_ENDPOINT,
        "errors": batch_errors(job.errors), "input_file_id": job.input_file,
        "completion_window": COMPLETION_WINDOW, "status": job.status,
        "output_file_id": output_file_id, "error_file_id": error_file_id,
        "created_at": unix(job.created_at),
        **{name: unix(getattr(job, name)) for name in _STAMPS},
        "request_counts": {"total": job.total, "completed": job.completed,
                           "failed": job.failed},
        "metadata": batch_metadata(job), "model": model_name(job),
        "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": completion,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": prompt + completion},
    }


def batch_errors(errors: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Validation errors (line, field, message) as the Batch API's error list."""
    if not errors:
        return None
    data = []
    for error in errors:
        field = error.get("field") or ""
        whole = field in ("(file)", "(line)")
        # A code of its own (model_not_found, mismatched_model), else one by the field.
        data.append({"code": error.get("code") or {
                         "(file)": "invalid_file", "(line)": "invalid_json_line"}.get(
                         field, "invalid_request"),
                     "message": f"{field}: {error.get('message')}" if field else
                     str(error.get("message")),
                     "param": None if whole else field,
                     "line": error.get("line") or None})
    return {"object": "list", "data": data}


def output_line(job: Job, request: Request, result: dict[str, Any],
                public_id: str) -> dict[str, Any]:
    """A request that produced an answer: a chat.completion whose message is the fused
    answer, with blendq's whole result line (ranking, candidates, fusion) under
    ``blendq``. ``usage`` counts every candidate's tokens: what the ensemble spent.
    ``public_id``: the request's opaque id (``req_…``); its row id is never shown."""
    result = {**result, "request_id": public_id}
    suffix = public_id.removeprefix("req_")
    prompt = sum(c["prompt_tokens"] for c in result["candidates"] if c["ok"])
    completion = sum(c["completion_tokens"] for c in result["candidates"] if c["ok"])
    body = {
        "id": f"chatcmpl-{suffix}", "object": "chat.completion",
        "created": unix(request.completed_at) or unix(job.created_at), "model": model_name(job),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer(result),
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "system_fingerprint": None,
        "blendq": result,
    }
    return {"id": f"batch_req_{suffix}", "custom_id": request.custom_id,
            "response": {"status_code": 200, "request_id": public_id, "body": body},
            "error": None}


def answer(result: dict[str, Any]) -> str:
    if result["fused_output"] is not None:
        return str(result["fused_output"])
    chosen = result.get("chosen")
    return str(chosen["text"]) if chosen else ""


def error_line(job: Job, request: Request, public_id: str) -> dict[str, Any]:
    """A request without an answer. Failures inside blendq are not HTTP errors of the
    request, so, as in the Batch API, ``response`` is null and ``error`` says why."""
    if request.status == "cancelled":
        code = "batch_expired" if job.status == JobStatus.EXPIRED else "batch_cancelled"
    else:
        code = "request_failed"
    return {"id": f"batch_req_{public_id.removeprefix('req_')}",
            "custom_id": request.custom_id, "response": None,
            "error": {"code": code, "message": request.error or f"request {request.status}"}}


def jsonl(line: dict[str, Any]) -> bytes:
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
