"""The Batch API's objects as blendq renders them, and job options from metadata and
tenant defaults (pure functions; no server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from openai.types import Batch, FileObject

from db.models import BatchFile, Job, JobStatus, Request
from db.queries_api import is_batch
from ops.api.batch_files import new_file_id
from ops.api.batch_objects import (
    ERROR,
    batch_errors,
    batch_object,
    error_line,
    file_object,
    list_object,
    output_line,
)
from ops.api.options import OptionError, checked_defaults, from_metadata, job_options
from orchestration.registry import BUILTIN_REGISTRY, parse_registry

REGISTRY = parse_registry(BUILTIN_REGISTRY, "builtin")
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _job(**changes: Any) -> Job:
    values: dict[str, Any] = {
        "id": "job_abc", "tenant": "t", "status": JobStatus.COMPLETED,
        "input_file": "file-123", "models": ["tiny-a", "tiny-b"], "total": 3, "completed": 2,
        "failed": 1, "created_at": T0, "in_progress_at": T0, "completed_at": T0,
        "meta": {"project": "x", "retries": [{"at": "...", "requests": 1}]}}
    return Job(**{**values, **changes})


def _result(fused: str | None = "fused!") -> dict[str, Any]:
    return {"custom_id": "q1", "status": "completed", "fused_output": fused,
            "chosen": {"candidate_id": 7, "model": "tiny-b", "text": "chosen text"},
            "ranking": None, "fusion": None, "error": None,
            "candidates": [
                {"candidate_id": 7, "model": "tiny-b", "ok": True, "text": "b",
                 "prompt_tokens": 10, "completion_tokens": 4},
                {"candidate_id": 8, "model": "tiny-a", "ok": False, "text": "",
                 "prompt_tokens": 0, "completion_tokens": 0}]}


def test_a_batch_parses_as_the_openai_clients_batch() -> None:
    rendered = batch_object(_job(), "file-output-abc", "file-errors-abc", tokens=(30, 12))
    parsed = Batch.model_validate(rendered)
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens,
            parsed.usage.total_tokens) == (30, 12, 42)
    assert parsed.status == "completed" and parsed.object == "batch"
    assert parsed.request_counts is not None and parsed.request_counts.failed == 1
    assert parsed.created_at == int(T0.timestamp()) and parsed.completed_at == parsed.created_at
    assert parsed.failed_at is None and parsed.errors is None
    # Only the client's string pairs come back as metadata, not blendq's retry records.
    assert parsed.metadata == {"project": "x"}
    assert parsed.endpoint == "/v1/chat/completions" and parsed.completion_window == "24h"


def test_validation_errors_become_the_batch_error_list() -> None:
    errors = batch_errors([{"line": 2, "field": "body.messages", "message": "is missing"},
                           {"line": 3, "field": "(line)", "message": "not valid JSON"},
                           {"line": 0, "field": "(file)", "message": "2 more errors"}])
    assert errors is not None and errors["object"] == "list"
    first, second, third = errors["data"]
    assert first == {"code": "invalid_request", "message": "body.messages: is missing",
                     "param": "body.messages", "line": 2}
    assert (second["code"], second["param"], second["line"]) == ("invalid_json_line", None, 3)
    assert (third["code"], third["line"]) == ("invalid_file", None)
    failed = Batch.model_validate(batch_object(_job(status="failed", errors=[
        {"line": 2, "field": "custom_id", "message": "is missing"}])))
    assert failed.errors is not None and failed.errors.data is not None
    assert failed.errors.data[0].line == 2 and failed.errors.data[0].param == "custom_id"


def test_an_output_line_is_a_chat_completion_carrying_the_result() -> None:
    request = Request(id=41, job_id="job_abc", line_no=1, custom_id="q1", instruction="i",
                      completed_at=T0)
    public = "req_5a0b3c9d1e2f4a6b"  # the request's opaque id: its row id is never shown
    line = output_line(_job(), request, _result(), public)
    assert (line["id"], line["custom_id"], line["error"]) == (
        "batch_req_5a0b3c9d1e2f4a6b", "q1", None)
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"] == public
    assert "_41" not in json.dumps(line) and "-41" not in json.dumps(line)
    body = response["body"]
    assert body["object"] == "chat.completion" and body["created"] == int(T0.timestamp())
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "fused!",
                                             "refusal": None}
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    assert body["blendq"] == {**_result(), "request_id": public}
    json.dumps(line)  # every value is JSON
    # Without a fused text (never stored so today), the top-ranked candidate answers.
    assert output_line(_job(), request, _result(None), public)["response"]["body"]["choices"][0][
        "message"]["content"] == "chosen text"


def test_error_lines_say_why_a_request_has_no_answer() -> None:
    failed = Request(id=5, job_id="job_abc", line_no=1, custom_id="q5", instruction="i",
                     status="failed", error="every generator failed")
    assert error_line(_job(), failed, "req_00000000000000aa") == {
        "id": "batch_req_00000000000000aa", "custom_id": "q5", "response": None,
        "error": {"code": "request_failed", "message": "every generator failed"}}
    cancelled = Request(id=6, job_id="job_abc", line_no=2, custom_id="q6", instruction="i",
                        status="cancelled", error="job cancelled before this chunk started")
    assert error_line(_job(status="cancelled"), cancelled, "req_00000000000000ab")["error"][
        "code"] == "batch_cancelled"
    assert error_line(_job(status="expired"), cancelled, "req_00000000000000ab")["error"][
        "code"] == "batch_expired"


def test_files_render_as_the_openai_clients_file_objects() -> None:
    row = BatchFile(id="file-errors-abc", tenant="t", purpose=ERROR, filename="e.jsonl",
                    size=12, created_at=T0, job_id="job_abc")
    parsed = FileObject.model_validate(file_object(row))
    assert (parsed.purpose, parsed.bytes, parsed.object) == ("batch_output", 12, "file")
    page = list_object([file_object(row)], has_more=False)
    assert page["first_id"] == page["last_id"] == "file-errors-abc"
    assert list_object([], False)["first_id"] is None


def test_options_come_from_the_request_then_the_tenant_then_the_registry() -> None:
    given = from_metadata({"blendq.models": "tiny-a, tiny-b", "blendq.top_k": "2",
                           "project": "not an option"})
    assert given == {"models": "tiny-a, tiny-b", "top_k": "2"}
    options = job_options(given, "metadata.blendq.", {"strategy": "half", "top_k": 3},
                          REGISTRY, chunk_size=8, tenant="t")
    assert (options.models, options.top_k, options.strategy) == (["tiny-a", "tiny-b"], 2, "half")
    assert (options.ranker, options.fuser, options.chunk_size) == ("tiny-ranker", "tiny-fuser", 8)
    # A default top-k is a most: two models named by the request fuse both.
    clamped = job_options({"models": ["tiny-a", "tiny-b"]}, "options.", {"top_k": 3},
                          REGISTRY, chunk_size=8, tenant="t")
    assert clamped.top_k == 2
    everything = job_options({}, "options.", {}, REGISTRY, chunk_size=4, tenant="t")
    assert everything.models == ["tiny-a", "tiny-b", "tiny-c"] and everything.top_k == 3


@pytest.mark.parametrize(("given", "defaults", "param", "words"), [
    ({"top_k": "x"}, {}, "metadata.blendq.top_k", "integer"),
    ({"models": "tiny-a", "top_k": "2"}, {}, "metadata.blendq.top_k", "between 1"),
    ({"models": "nope"}, {}, "metadata.blendq.models", "unknown model"),
    ({"ranker": "tiny-a"}, {}, "metadata.blendq.ranker", "not a ranker"),
    ({"strategy": "sideways"}, {}, "metadata.blendq.strategy", "must be one of"),
    ({"colour": "red"}, {}, "metadata.blendq.colour", "unknown option"),
    ({"chunk_size": "0"}, {}, "metadata.blendq.chunk_size", "between 1"),
    ({}, {"fuser": "tiny-ranker"}, "tenant_defaults.fuser", "not a fuser"),
])
def test_a_bad_option_names_where_it_came_from(given: dict[str, Any], defaults: dict[str, Any],
                                               param: str, words: str) -> None:
    with pytest.raises(OptionError) as caught:
        job_options(given, "metadata.blendq.", defaults, REGISTRY, chunk_size=8, tenant="t")
    assert caught.value.param == param and words in caught.value.message


def test_tenant_defaults_are_checked_when_set() -> None:
    assert checked_defaults({"models": "tiny-a,tiny-c", "top_k": 2}, REGISTRY) == {
        "models": ["tiny-a", "tiny-c"], "top_k": 2}
    with pytest.raises(OptionError) as caught:
        checked_defaults({"models": "tiny-a", "top_k": 2}, REGISTRY)
    assert caught.value.param == "top_k"


def test_a_batch_is_a_job_made_from_an_upload() -> None:
    assert is_batch(_job(input_file=new_file_id()))
    # What `jobs submit` records is the path it was given, whatever its name.
    assert not is_batch(_job(input_file="file-2024.jsonl"))
    assert not is_batch(_job(input_file=None))
