"""The OpenAI Batch API, driven by the official ``openai`` client against ``manage.py
serve`` beside real workers: a batch runs to completed and its output file matches the
stored results, a cancelled batch keeps what finished, a bad file fails with errors that
name line and field."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Batch
from openai.types.chat import ChatCompletion
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import Chunk
from ops.api.public_ids import request_ids
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
TENANT = "batch-co"
CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with running_api(stack, tmp_path_factory.mktemp("api-batch")) as value:
        yield value


@pytest.fixture(scope="module")
def client(server: ApiServer) -> OpenAI:
    return OpenAI(base_url=server.base_url + "/v1", api_key=server.key(TENANT, "submitter"),
                  max_retries=0)


def write_requests(path: Path, n: int, prefix: str = "r") -> Path:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({
                "custom_id": f"{prefix}-{i:03d}", "method": "POST", "url": CHAT,
                # The alias of the ensemble the batch runs (ops/api/model_names.py).
                "body": {"model": "blendq", "max_tokens": 16, "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"Question {i}: name a colour."}]},
            }) + "\n")
    return path


def wait_until(client: OpenAI, batch_id: str, done: Any, timeout: float = 180) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status}: {batch}")
        time.sleep(0.3)


def wait_for_a_started_chunk(url: str, job_id: str, timeout: float = 120) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with Session(engine) as session:
                started = session.exec(select(func.count()).select_from(Chunk).where(
                    Chunk.job_id == job_id, col(Chunk.status).in_(("running", "done")))).one()
            if started:
                return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"no chunk of {job_id} started in {timeout}s")


def stored_results(stack: Stack, job_id: str, folder: Path) -> list[dict[str, Any]]:
    out = folder / f"{job_id}.results.jsonl"
    stack.manage("jobs", "results", job_id, "-o", str(out))
    return [json.loads(line) for line in out.read_text().splitlines()]


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_openai_client_runs_a_batch_and_downloads_matching_output(
        client: OpenAI, stack: Stack, tmp_path: Path) -> None:
    source = write_requests(tmp_path / "batch.jsonl", 4)
    with source.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    assert (uploaded.purpose, uploaded.bytes) == ("batch", source.stat().st_size)
    assert client.files.content(uploaded.id).content == source.read_bytes()

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
        metadata={"blendq.models": "tiny-a,tiny-b", "blendq.chunk_size": "2",
                  "project": "colours"})
    # As OpenAI's: validating first, the file read after the create answered.
    assert created.status == "validating" and created.output_file_id is None
    batch = wait_until(client, created.id, lambda b: b.status in TERMINAL)
    assert batch.request_counts is not None and batch.request_counts.total == 4
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    assert batch.completed_at and batch.finalizing_at and batch.in_progress_at
    assert batch.metadata == {"blendq.models": "tiny-a,tiny-b", "blendq.chunk_size": "2",
                              "project": "colours"}
    assert batch.output_file_id and batch.error_file_id is None
    assert created.id in [b.id for b in client.batches.list(limit=100)]

    text = client.files.content(batch.output_file_id).text
    assert client.files.retrieve(batch.output_file_id).bytes == len(text.encode())
    lines = jsonl(text)
    stored = stored_results(stack, created.id, tmp_path)
    assert [line["custom_id"] for line in lines] == [f"r-{i:03d}" for i in range(4)]
    assert len(lines) == len(stored) == 4
    ids = request_ids(stack.settings.database_url)
    for line, result in zip(lines, stored, strict=True):
        assert line["error"] is None and line["custom_id"] == result["custom_id"]
        # The request's opaque id, never its row id (which `jobs results` shows admins).
        public = line["response"]["request_id"]
        assert ids.decode(public) == result["request_id"]
        assert line["id"] == "batch_req_" + public.removeprefix("req_")
        assert line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content == result["fused_output"]
        assert completion.model == "blendq:tiny-a+tiny-b"
        extra = line["response"]["body"]["blendq"]
        # Ranking, candidates and fusion exactly as stored.
        assert extra == {**result, "request_id": public}
        assert [c["model"] for c in extra["candidates"]] == ["tiny-a", "tiny-b"]
        assert extra["ranking"]["entries"] and extra["fusion"]["fuser"] == "tiny-fuser"
    # The batch's usage is what its lines report, all requests having succeeded.
    assert batch.usage is not None and batch.usage.total_tokens > 0
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (
        sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines),
        sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines))


def test_a_cancelled_batch_keeps_the_answers_that_finished(
        client: OpenAI, stack: Stack, tmp_path: Path) -> None:
    source = write_requests(tmp_path / "big.jsonl", 40, prefix="c")
    uploaded = client.files.create(file=source, purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT,
                                    completion_window="24h",
                                    metadata={"blendq.chunk_size": "2"})
    # Cancel as soon as a worker has started a chunk: that chunk finishes and keeps its
    # answers, the chunks not yet started are cancelled.
    wait_for_a_started_chunk(stack.settings.database_url, created.id)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait_until(client, created.id, lambda b: b.status in TERMINAL)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts is not None and 0 < counts.completed < 40, counts
    assert batch.output_file_id and batch.error_file_id

    output = jsonl(client.files.content(batch.output_file_id).text)
    errors = jsonl(client.files.content(batch.error_file_id).text)
    stored = {r["custom_id"]: r for r in stored_results(stack, created.id, tmp_path)}
    assert len(output) == counts.completed
    assert len(output) + len(errors) == 40
    for line in output:
        assert stored[line["custom_id"]]["status"] == "completed"
        assert line["response"]["body"]["blendq"] == {
            **stored[line["custom_id"]], "request_id": line["response"]["request_id"]}
    cancelled = [e for e in errors if e["error"]["code"] == "batch_cancelled"]
    assert len(cancelled) == 40 - counts.completed - counts.failed
    assert all(stored[e["custom_id"]]["status"] == "cancelled" for e in cancelled)
    # Cancelling again, once it ended, returns the batch as it is.
    assert client.batches.cancel(created.id).status == "cancelled"


def test_an_invalid_file_fails_the_batch_with_line_and_field(client: OpenAI,
                                                             tmp_path: Path) -> None:
    good = json.loads(write_requests(tmp_path / "one.jsonl", 1).read_text())
    no_messages = {**good, "custom_id": "r-001", "body": {"model": "x", "messages": []}}
    wrong_url = {**good, "custom_id": "r-002", "url": "/v1/embeddings"}
    unknown_model = {**good, "custom_id": "r-004",
                     "body": {**good["body"], "model": "gpt-4o-mini"}}
    # A line that is no JSON is refused with the upload, naming it.
    with pytest.raises(openai.BadRequestError) as not_jsonl:
        client.files.create(file=("bad.jsonl", b"{not json\n"), purpose="batch")
    assert "line 1" in str(not_jsonl.value)
    content = "\n".join([json.dumps(good), json.dumps(no_messages), json.dumps(wrong_url),
                         json.dumps(good), json.dumps(unknown_model)]) + "\n"
    uploaded = client.files.create(file=("bad.jsonl", content.encode()), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT,
                                    completion_window="24h")
    assert created.status == "validating"
    batch = wait_until(client, created.id, lambda b: b.status in TERMINAL)
    assert batch.status == "failed" and batch.failed_at and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.param, e.code) for e in batch.errors.data]
    assert found == [(2, "body.messages", "invalid_request"),
                     (3, "url", "invalid_request"),
                     (4, "custom_id", "invalid_request"),
                     (5, "body.model", "model_not_found")]
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None
    assert client.batches.retrieve(batch.id).status == "failed"


def test_bad_requests_raise_the_openai_clients_errors(client: OpenAI) -> None:
    uploaded = client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as bad_option:
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT,
                              completion_window="24h", metadata={"blendq.strategy": "best"})
    assert bad_option.value.param == "metadata.blendq.strategy"
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                              completion_window="24h")
    assert bad_endpoint.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("job_does_not_exist")
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
