"""The Batch API and the native API in process, on the run's real database, for what needs
no worker: uploads, validation, options, idempotency, paging, cancelling a job before any
chunk started, tenants. The flows through workers are in tests/integration/test_api_*."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from db.api_keys import create_key
from db.engine import session_scope
from db.models import Job, Outbox, Tenant
from ops.api.app import create_app
from orchestration.settings import Settings

CHAT = "/v1/chat/completions"


def _lines(n: int, prefix: str = "q") -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"{prefix}{i}", "method": "POST", "url": CHAT,
        "body": {"model": "blendq", "messages": [{"role": "user", "content": f"Say {i}"}]},
    }).encode() + b"\n" for i in range(n))


@pytest.fixture(scope="module")
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as value:
        yield value


def _headers(settings: Settings, tenant: str, role: str = "submitter",
             **extra: str) -> dict[str, str]:
    with session_scope(settings.database_url) as session:
        secret = create_key(session, tenant, role).secret
    return {"Authorization": f"Bearer {secret}", **extra}


def _upload(client: TestClient, headers: dict[str, str], content: bytes,
            purpose: str = "batch") -> dict[str, object]:
    response = client.post("/v1/files", headers=headers, data={"purpose": purpose},
                           files={"file": ("in.jsonl", content, "application/jsonl")})
    assert response.status_code == 200, response.text
    value: dict[str, object] = response.json()
    return value


def test_upload_list_read_and_delete_a_file(app_client: TestClient, settings: Settings) -> None:
    h = _headers(settings, "http-files")
    made = _upload(app_client, h, _lines(2))
    assert made["object"] == "file" and made["purpose"] == "batch"
    assert made["bytes"] == len(_lines(2)) and made["filename"] == "in.jsonl"
    assert app_client.get(f"/v1/files/{made['id']}/content", headers=h).content == _lines(2)
    second = _upload(app_client, h, b"{}\n")
    listed = app_client.get("/v1/files", headers=h).json()
    assert [f["id"] for f in listed["data"]] == [second["id"], made["id"]]
    paged = app_client.get("/v1/files", headers=h, params={"limit": 1, "order": "asc"}).json()
    assert [f["id"] for f in paged["data"]] == [made["id"]] and paged["has_more"] is True
    rest = app_client.get("/v1/files", headers=h, params={"limit": 1, "order": "asc",
                                                          "after": made["id"]}).json()
    assert [f["id"] for f in rest["data"]] == [second["id"]] and rest["has_more"] is False
    deleted = app_client.delete(f"/v1/files/{made['id']}", headers=h).json()
    assert deleted == {"id": made["id"], "object": "file", "deleted": True}
    assert app_client.get(f"/v1/files/{made['id']}", headers=h).status_code == 404


def test_an_upload_needs_purpose_batch(app_client: TestClient, settings: Settings) -> None:
    h = _headers(settings, "http-purpose")
    response = app_client.post("/v1/files", headers=h, data={"purpose": "fine-tune"},
                               files={"file": ("in.jsonl", b"{}", "application/jsonl")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    missing = app_client.post("/v1/files", headers=h,
                              files={"file": ("in.jsonl", b"{}", "application/jsonl")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "purpose"


def test_a_batch_request_is_checked_field_by_field(app_client: TestClient,
                                                   settings: Settings) -> None:
    h = _headers(settings, "http-fields")
    file_id = _upload(app_client, h, _lines(1))["id"]
    good = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    for change, param in ((("endpoint", "/v1/embeddings"), "endpoint"),
                          (("completion_window", "1h"), "completion_window"),
                          (("metadata", {"blendq.top_k": "9"}), "metadata.blendq.top_k"),
                          (("metadata", {"blendq.models": "tiny-z"}), "metadata.blendq.models"),
                          (("metadata", {f"k{i}": "v" for i in range(17)}), "metadata")):
        response = app_client.post("/v1/batches", headers=h, json={**good, change[0]: change[1]})
        assert response.status_code == 400, change
        assert response.json()["error"]["param"] == param
    missing = app_client.post("/v1/batches", headers=h, json={**good, "input_file_id": "file-x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "input_file_id"


def test_an_invalid_file_gives_a_failed_batch_naming_line_and_field(
        app_client: TestClient, settings: Settings) -> None:
    h = _headers(settings, "http-invalid")
    bad = _lines(1) + b'{"custom_id": "q9", "method": "POST", "url": "/v1/chat/completions", ' \
                      b'"body": {"messages": []}}\n{"custom_id": 3}\n'
    file_id = _upload(app_client, h, bad)["id"]
    made = app_client.post("/v1/batches", headers=h, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}).json()
    # As OpenAI's: validated after the create answered.
    assert made["status"] == "validating" and made["errors"] is None
    batch = app_client.get(f"/v1/batches/{made['id']}", headers=h).json()
    assert batch["status"] == "failed" and batch["failed_at"]
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    errors = batch["errors"]["data"]
    assert [(e["line"], e["param"]) for e in errors] == [(2, "body.messages"),
                                                         (3, "custom_id")]
    assert errors[1]["code"] == "invalid_request"


def test_metadata_then_tenant_defaults_choose_the_options(app_client: TestClient,
                                                          settings: Settings) -> None:
    h = _headers(settings, "http-defaults")
    with session_scope(settings.database_url) as session:
        tenant = session.get(Tenant, "http-defaults")
        assert tenant is not None
        tenant.defaults = {"models": ["tiny-b", "tiny-c"], "strategy": "half", "top_k": 2}
        session.add(tenant)
    file_id = _upload(app_client, h, _lines(3))["id"]
    batch = app_client.post("/v1/batches", headers=h, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h",
        "metadata": {"blendq.fuser": "none", "blendq.chunk_size": "2", "note": "hi"}}).json()
    assert batch["status"] == "validating" and batch["metadata"]["note"] == "hi"
    seen = app_client.get(f"/v1/batches/{batch['id']}", headers=h).json()
    assert seen["status"] == "in_progress" and seen["in_progress_at"] is not None
    with session_scope(settings.database_url) as session:
        job = session.get(Job, batch["id"])
        assert job is not None
        assert (job.models, job.strategy, job.top_k, job.fuser, job.chunk_size) == (
            ["tiny-b", "tiny-c"], "half", 2, None, 2)
        chunks = session.exec(select(Outbox).where(Outbox.job_id == job.id)).all()
        assert len(chunks) == 2


def test_cancelling_before_any_chunk_started_cancels_every_request(
        app_client: TestClient, settings: Settings) -> None:
    h = _headers(settings, "http-cancel")
    file_id = _upload(app_client, h, _lines(3))["id"]
    batch = app_client.post("/v1/batches", headers=h, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}).json()
    # No dispatcher runs here: every chunk is still waiting, so the batch ends at once.
    cancelled = app_client.post(f"/v1/batches/{batch['id']}/cancel", headers=h).json()
    assert cancelled["status"] == "cancelled" and cancelled["output_file_id"] is None
    assert cancelled["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    errors = app_client.get(f"/v1/files/{cancelled['error_file_id']}/content", headers=h)
    lines = [json.loads(line) for line in errors.text.splitlines()]
    assert [(x["custom_id"], x["error"]["code"]) for x in lines] == [
        ("q0", "batch_cancelled"), ("q1", "batch_cancelled"), ("q2", "batch_cancelled")]
    meta = app_client.get(f"/v1/files/{cancelled['error_file_id']}", headers=h).json()
    assert meta["bytes"] == len(errors.content) and meta["purpose"] == "batch_output"
    again = app_client.post(f"/v1/batches/{batch['id']}/cancel", headers=h).json()
    assert again["status"] == "cancelled"
    assert app_client.delete(f"/v1/files/{cancelled['error_file_id']}",
                             headers=h).status_code == 400


def test_a_batch_past_its_window_expires_with_its_requests_in_the_error_file(
        app_client: TestClient, settings: Settings) -> None:
    from datetime import timedelta

    from db.models import utcnow
    from orchestration.lifecycle import expire_due_jobs

    h = _headers(settings, "http-expire")
    file_id = _upload(app_client, h, _lines(2))["id"]
    batch = app_client.post("/v1/batches", headers=h, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}).json()
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    # What the dispatcher does on its rounds, a day and a minute later.
    with session_scope(settings.database_url) as session:
        expired = expire_due_jobs(session, utcnow() + timedelta(hours=24, minutes=1))
    assert batch["id"] in expired
    seen = app_client.get(f"/v1/batches/{batch['id']}", headers=h).json()
    assert seen["status"] == "expired" and seen["expired_at"] is not None
    assert seen["output_file_id"] is None and seen["error_file_id"]
    errors = app_client.get(f"/v1/files/{seen['error_file_id']}/content", headers=h)
    assert [(x["custom_id"], x["error"]["code"]) for x in map(
        json.loads, errors.text.splitlines())] == [("q0", "batch_expired"),
                                                   ("q1", "batch_expired")]
    # Cancelling an ended batch changes nothing.
    after = app_client.post(f"/v1/batches/{batch['id']}/cancel", headers=h).json()
    assert (after["status"], after["cancelled_at"]) == ("expired", None)


def test_batches_page_newest_first(app_client: TestClient, settings: Settings) -> None:
    h = _headers(settings, "http-pages")
    file_id = _upload(app_client, h, _lines(1))["id"]
    ids = [app_client.post("/v1/batches", headers=h, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}).json()["id"]
        for _ in range(3)]
    first = app_client.get("/v1/batches", headers=h, params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[:0:-1] and first["has_more"] is True
    rest = app_client.get("/v1/batches", headers=h,
                          params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    # Another tenant's batch is no cursor here, as an unknown id is not.
    other = _headers(settings, "http-pages-other")
    for client_headers, path in ((other, "/v1/batches"), (other, "/api/v1/jobs"),
                                 (h, "/v1/files")):
        refused = app_client.get(path, headers=client_headers, params={"after": ids[0]})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "after" and error["code"] == "invalid_cursor"
        assert ids[0] in error["message"]


def test_idempotency_keys_return_the_first_object(app_client: TestClient,
                                                  settings: Settings) -> None:
    h = _headers(settings, "http-idem", **{"Idempotency-Key": "k-1"})
    first = _upload(app_client, h, _lines(1))
    replay = app_client.post("/v1/files", headers=h, data={"purpose": "batch"},
                             files={"file": ("other.jsonl", _lines(2), "application/jsonl")})
    assert replay.json()["id"] == first["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    body = {"input_file_id": first["id"], "endpoint": CHAT, "completion_window": "24h"}
    batch = app_client.post("/v1/batches", headers=h, json=body)
    assert "idempotent-replayed" not in batch.headers
    again = app_client.post("/v1/batches", headers=h, json=body)
    assert again.json()["id"] == batch.json()["id"] and again.headers["idempotent-replayed"]
    # The same key names a different kind of object for jobs: no collision.
    job = app_client.post("/api/v1/jobs", headers=h, json={"requests": [
        {"custom_id": "a", "instruction": "Say hi."}]})
    assert job.status_code == 201 and job.json()["id"] != batch.json()["id"]
    job_again = app_client.post("/api/v1/jobs", headers=h, json={"requests": [
        {"custom_id": "b", "instruction": "Something else."}]})
    assert job_again.status_code == 200 and job_again.json()["id"] == job.json()["id"]
    # Another tenant's identical key is its own.
    other = _headers(settings, "http-idem-2", **{"Idempotency-Key": "k-1"})
    assert _upload(app_client, other, _lines(1))["id"] != first["id"]
    bad = app_client.post("/api/v1/jobs", headers={**h, "Idempotency-Key": "x" * 201},
                          json={"requests": [{"custom_id": "a", "instruction": "hi"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"


def test_native_jobs_validate_their_requests_and_options(app_client: TestClient,
                                                         settings: Settings) -> None:
    h = _headers(settings, "http-native")
    bad = app_client.post("/api/v1/jobs", headers=h, json={"requests": [
        {"custom_id": "a", "instruction": "fine"}, {"custom_id": "a", "instruction": "dup"},
        "not an object"]})
    assert bad.status_code == 201
    assert bad.json()["status"] == "failed"
    assert [(e["line"], e["field"]) for e in bad.json()["errors"]] == [
        (2, "custom_id"), (3, "(line)")]
    option = app_client.post("/api/v1/jobs", headers=h, json={
        "requests": [{"custom_id": "a", "instruction": "x"}], "options": {"top_k": 0}})
    assert option.status_code == 400 and option.json()["error"]["param"] == "options.top_k"
    empty = app_client.post("/api/v1/jobs", headers=h, json={"requests": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "requests"
    listed = app_client.get("/api/v1/jobs", headers=h, params={"status": "failed"}).json()
    assert [j["id"] for j in listed["data"]] == [bad.json()["id"]]


def test_a_streamed_upload_over_the_limit_is_413_not_a_parse_error(settings: Settings) -> None:
    small = settings.model_copy(update={"api_max_body_bytes": 2048})
    h = _headers(settings, "http-chunked")
    boundary = "blendq-test-boundary"

    def multipart(kib: int) -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
               f'batch\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
               f'filename="in.jsonl"\r\n\r\n').encode()
        for _ in range(kib):  # JSONL: uploads are checked as such
            yield json.dumps({"custom_id": "x", "instruction": "x" * 990}).encode().ljust(
                1023) + b"\n"
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**h, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    with TestClient(create_app(small)) as client:
        assert client.post("/v1/files", headers=headers, content=multipart(1)).status_code == 200
        refused = client.post("/v1/files", headers=headers, content=multipart(8))
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"
