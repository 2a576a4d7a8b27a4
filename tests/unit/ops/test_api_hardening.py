"""Each finding of the API probe (issue 16), as the probe met it, in process on the run's
real database: the pages' cookie, inputs that gave 500s, OpenAI Batch parity, friendlier
input, opaque ids, failed key attempts and security headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from db.api_keys import create_key, revoke_key
from db.engine import session_scope
from db.models import ApiSession, Job, Request
from ops.api.app import create_app
from ops.api.deps import SESSION_COOKIE
from ops.api.headers import API_POLICY, PAGES_POLICY
from ops.api.public_ids import request_ids
from orchestration.settings import Settings

CHAT = "/v1/chat/completions"
_addresses = count(1)


def _line(i: int, model: str | None = "blendq", **extra: object) -> bytes:
    body: dict[str, object] = {"messages": [{"role": "user", "content": f"Say {i}"}]}
    if model is not None:
        body["model"] = model
    return json.dumps({"custom_id": f"q{i}", "method": "POST", "url": CHAT, "body": body,
                       **extra}).encode() + b"\n"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # An address of its own per test: failed key attempts count per address.
    address = f"10.16.0.{next(_addresses)}"
    with TestClient(create_app(settings), raise_server_exceptions=False,
                    client=(address, 50000), follow_redirects=False) as value:
        yield value


def _key(settings: Settings, tenant: str, role: str) -> str:
    with session_scope(settings.database_url) as session:
        return create_key(session, tenant, role).secret


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _upload(client: TestClient, h: dict[str, str], content: bytes) -> str:
    response = client.post("/v1/files", headers=h, data={"purpose": "batch"},
                           files={"file": ("in.jsonl", content, "application/jsonl")})
    assert response.status_code == 200, response.text
    value: str = response.json()["id"]
    return value


def _batch(client: TestClient, h: dict[str, str], content: bytes,
           **extra: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch as its create answered, and as the next read shows it."""
    made = client.post("/v1/batches", headers=h, json={
        "input_file_id": _upload(client, h, content), "endpoint": CHAT,
        "completion_window": "24h", **extra})
    assert made.status_code == 200, made.text
    seen = client.get(f"/v1/batches/{made.json()['id']}", headers=h)
    return made.json(), seen.json()


# -- the pages' cookie ------------------------------------------------------------------------
def test_the_api_takes_only_the_authorization_header(client: TestClient,
                                                     settings: Settings) -> None:
    secret = _key(settings, "hard-cookie", "admin")
    # The old cookie held the raw key, and the API took it from any origin.
    for name in ("blendq_key", SESSION_COOKIE):
        client.cookies.set(name, secret)
        for method, path in (("GET", "/api/v1/me"), ("POST", "/v1/batches/job_x/cancel"),
                             ("GET", "/v1/files")):
            answer = client.request(method, path, headers={"Origin": "http://evil.example"})
            assert answer.status_code == 401, (name, path, answer.text)
        client.cookies.clear()
    assert client.get("/api/v1/me", headers=_auth(secret)).status_code == 200


def test_signing_in_opens_a_session_that_sign_out_and_revoking_end(
        client: TestClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        created = create_key(session, "hard-session", "auditor", "ana")
    base = "http://testserver"
    # A browser that still holds the old cookie (the raw key) has it removed at sign-in.
    client.cookies.set("blendq_key", created.secret)
    signed_in = client.post("/audit/login", data={"key": created.secret},
                            headers={"Origin": base})
    assert signed_in.status_code == 303
    assert 'blendq_key=""' in ",".join(signed_in.headers.get_list("set-cookie"))
    client.cookies.delete("blendq_key")
    token = signed_in.cookies[SESSION_COOKIE]
    assert token and token not in created.secret and created.secret not in token
    with session_scope(settings.database_url) as session:
        stored = session.exec(select(ApiSession).where(
            ApiSession.key_id == created.key_id)).all()
        # Only a hash of the token is kept, with an expiry.
        assert len(stored) == 1 and token not in stored[0].token_hash
        assert stored[0].expires_at > stored[0].created_at
    assert client.get("/audit/").status_code == 200
    out = client.post("/audit/logout", headers={"Origin": base})
    assert out.status_code == 303
    # The token is dead on the server, not only forgotten by this browser.
    client.cookies.set(SESSION_COOKIE, token)
    assert client.get("/audit/").status_code == 303
    with session_scope(settings.database_url) as session:
        assert session.exec(select(ApiSession).where(
            ApiSession.key_id == created.key_id)).all() == []
    client.cookies.clear()
    again = client.post("/audit/login", data={"key": created.secret}, headers={"Origin": base})
    assert again.status_code == 303 and client.get("/audit/").status_code == 200
    with session_scope(settings.database_url) as session:
        revoke_key(session, created.key_id)
    assert client.get("/audit/").status_code == 303


# -- no 5xx for any input ---------------------------------------------------------------------
def test_ids_pages_and_numbers_past_their_range_are_4xx(client: TestClient,
                                                        settings: Settings) -> None:
    h = _auth(_key(settings, "hard-range", "admin"))
    huge = "9223372036854775808"
    for path, status in ((f"/api/v1/requests/{huge}/audit", 404),
                         (f"/audit/requests/{huge}", 404),
                         ("/audit/?page=99999999999999999999999", 400),
                         ("/audit/jobs/job_x?page=99999999999999999999999", 400),
                         ("/v1/batches?limit=99999999999999999999999", 400),
                         (f"/audit/requests/req_{'f' * 16}?recorded={huge}", 400)):
        answer = client.get(path, headers=h)
        assert answer.status_code == status, (path, answer.text)


def test_a_label_naming_a_candidate_by_a_digit_that_is_not_ascii_is_400(
        client: TestClient, settings: Settings) -> None:
    h = _auth(_key(settings, "hard-label", "admin"))
    job = client.post("/api/v1/jobs", headers=h, json={
        "requests": [{"custom_id": "a", "instruction": "Hi"}]}).json()
    line = client.get(f"/api/v1/jobs/{job['id']}/results", headers=h).text.splitlines()[0]
    request_id = json.loads(line)["request_id"]
    for body in ({"better": "²", "worse": "tiny-a"}, {"better": 2**64, "worse": 1},
                 {"tie": ["tiny-a", "tiny-b\x00"]}, {"tie": [1, 2], "note": "x\x00"},
                 {"tie": [1, 2], "note": "\ud800"}):
        answer = client.post(f"/api/v1/requests/{request_id}/labels",
                             headers={**h, "Content-Type": "application/json"},
                             content=json.dumps(body).encode())
        assert answer.status_code == 400, (body, answer.text)


@pytest.mark.parametrize("metadata", [{"k\x00": "v"}, {"k": "v\x00"}, {"k": "\ud83d"},
                                      {"k": "bell\x07"}])
def test_control_characters_in_metadata_are_400_naming_the_field(
        client: TestClient, settings: Settings, metadata: dict[str, str]) -> None:
    h = _auth(_key(settings, "hard-nul", "admin"))
    file_id = _upload(client, h, _line(0))
    batch = client.post("/v1/batches", headers={**h, "Content-Type": "application/json"},
                        content=json.dumps({"input_file_id": file_id, "endpoint": CHAT,
                                            "completion_window": "24h",
                                            "metadata": metadata}).encode())
    assert batch.status_code == 400, batch.text
    assert "metadata" in batch.json()["error"]["message"]
    # Sent as JSON escapes: a lone surrogate has no UTF-8 form to send otherwise.
    job = client.post("/api/v1/jobs", headers={**h, "Content-Type": "application/json"},
                      content=json.dumps({"requests": [{"custom_id": "a", "instruction": "Hi"}],
                                          "metadata": metadata}).encode())
    assert job.status_code == 400, job.text
    assert job.json()["error"]["param"].startswith("metadata")


def test_control_characters_in_urls_are_400(client: TestClient, settings: Settings) -> None:
    h = _auth(_key(settings, "hard-url", "admin"))
    for path in ("/v1/files/file-%00", "/v1/files?after=%00", "/v1/batches?after=%00",
                 "/api/v1/jobs?after=x%01y", "/api/v1/jobs/job_%00/results",
                 "/v1/files/file-%00/content"):
        answer = client.get(path, headers=h)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_characters"


def test_non_finite_numbers_and_bad_text_in_a_native_job_are_400(
        client: TestClient, settings: Settings) -> None:
    h = {**_auth(_key(settings, "hard-nan", "admin")), "Content-Type": "application/json"}
    for raw in (b'{"requests": [{"custom_id": "a", "instruction": "Hi"}], '
                b'"options": {"top_k": NaN}}',
                b'{"requests": [{"custom_id": "a", "instruction": "Hi"}], '
                b'"metadata": {"x": Infinity}}',
                b'{"requests": [{"custom_id": "a", "instruction": "Hi"}], '
                b'"options": {"models": ["\\u0000"]}}'):
        answer = client.post("/api/v1/jobs", headers=h, content=raw)
        assert answer.status_code == 400, (raw, answer.text)


# -- OpenAI Batch parity ----------------------------------------------------------------------
def test_a_batch_is_validating_right_after_create(client: TestClient,
                                                  settings: Settings) -> None:
    h = _auth(_key(settings, "hard-validating", "submitter"))
    made, seen = _batch(client, h, _line(0) + _line(1))
    assert made["status"] == "validating" and made["in_progress_at"] is None
    assert made["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert seen["status"] == "in_progress" and seen["request_counts"]["total"] == 2


def test_an_unregistered_model_fails_the_batch_per_line(client: TestClient,
                                                        settings: Settings) -> None:
    h = _auth(_key(settings, "hard-model", "submitter"))
    _, seen = _batch(client, h, _line(0, "gpt-4o-mini") + _line(1, "gpt-4o-mini"))
    assert seen["status"] == "failed"
    errors = seen["errors"]["data"]
    assert [(e["line"], e["code"], e["param"]) for e in errors] == [
        (1, "model_not_found", "body.model"), (2, "model_not_found", "body.model")]
    assert "gpt-4o-mini" in errors[0]["message"] and "blendq" in errors[0]["message"]


def test_two_models_in_one_file_fail_with_a_mismatch(client: TestClient,
                                                     settings: Settings) -> None:
    h = _auth(_key(settings, "hard-mismatch", "submitter"))
    _, seen = _batch(client, h, _line(0, "tiny-a+tiny-b") + _line(1, "tiny-c"))
    assert seen["status"] == "failed"
    errors = seen["errors"]["data"]
    assert [(e["line"], e["code"]) for e in errors] == [(2, "mismatched_model")]


def test_the_files_model_chooses_the_ensemble(client: TestClient, settings: Settings) -> None:
    h = _auth(_key(settings, "hard-choose", "submitter"))
    made, seen = _batch(client, h, _line(0, "blendq:tiny-a+tiny-c") + _line(1, None))
    assert seen["status"] == "in_progress" and seen["model"] == "blendq:tiny-a+tiny-c"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, str(made["id"]))
        assert job is not None and job.models == ["tiny-a", "tiny-c"]
    # Metadata that chooses other models makes the file's model a mismatch.
    _, other = _batch(client, h, _line(0, "tiny-a+tiny-c"),
                      metadata={"blendq.models": "tiny-b"})
    assert other["status"] == "failed"
    assert other["errors"]["data"][0]["code"] == "mismatched_model"


@pytest.mark.parametrize(("content", "said"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1: not UTF-8"),
    (_line(0) + b"\xff\xfe oops\n", "line 2: not UTF-8"),
    (_line(0) + b'{"custom_id": "trunc', "line 2: not valid JSON"),
    (b"[1, 2]\n", "line 1: must be a JSON object"), (b"\n\n", "holds no lines")])
def test_uploads_are_checked_as_utf8_jsonl_when_they_arrive(
        client: TestClient, settings: Settings, content: bytes, said: str) -> None:
    h = _auth(_key(settings, "hard-upload", "submitter"))
    answer = client.post("/v1/files", headers=h, data={"purpose": "batch"},
                         files={"file": ("in.jsonl", content, "application/octet-stream")})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_file" and said in error["message"]


# -- memory before limits ---------------------------------------------------------------------
def test_a_native_job_over_the_request_cap_is_413(client: TestClient,
                                                  settings: Settings) -> None:
    h = {**_auth(_key(settings, "hard-cap", "submitter")), "Content-Type": "application/json"}
    item = b'{"custom_id": "x", "instruction": "y"}'
    answer = client.post("/api/v1/jobs", headers=h,
                         content=b'{"requests": [' + b",".join([item] * 50_001) + b"]}")
    assert answer.status_code == 413, answer.text[:300]
    assert answer.json()["error"]["code"] == "too_many_requests"


# -- input a back-office export produces ------------------------------------------------------
def test_a_bom_an_input_only_line_and_per_request_metadata(client: TestClient,
                                                           settings: Settings) -> None:
    h = _auth(_key(settings, "hard-export", "submitter"))
    native = (b'\xef\xbb\xbf{"custom_id": "a", "input": "Translate: bonjour", '
              b'"metadata": {"row": 17, "source": "crm"}}\n'
              b'{"custom_id": "b", "instruction": "Say hi."}\n')
    _, seen = _batch(client, h, native)
    assert seen["status"] == "in_progress", seen["errors"]
    job = client.post("/api/v1/jobs", headers=h, json={"requests": [
        {"custom_id": "a", "input": "Translate: bonjour", "metadata": {"row": 17}},
        {"custom_id": "b", "instruction": "Say hi."}]})
    assert job.status_code == 201 and job.json()["status"] == "in_progress", job.text
    lines = [json.loads(x) for x in client.get(f"/api/v1/jobs/{job.json()['id']}/results",
                                               headers=h).text.splitlines()]
    assert [x["metadata"] for x in lines] == [{"row": 17}, None]


def test_request_ids_in_outputs_are_opaque(client: TestClient, settings: Settings) -> None:
    h = _auth(_key(settings, "hard-ids", "admin"))
    job = client.post("/api/v1/jobs", headers=h, json={"requests": [
        {"custom_id": f"r{i}", "instruction": "Hi"} for i in range(3)]}).json()
    shown = [json.loads(x)["request_id"] for x in client.get(
        f"/api/v1/jobs/{job['id']}/results", headers=h).text.splitlines()]
    with session_scope(settings.database_url) as session:
        rows = [r.id for r in session.exec(select(Request).where(
            Request.job_id == job["id"]).order_by(Request.id)).all()]  # type: ignore[arg-type]
    assert all(isinstance(s, str) and s.startswith("req_") for s in shown)
    assert not {str(r) for r in rows} & {s.removeprefix("req_") for s in shown}
    assert [request_ids(settings.database_url).decode(s) for s in shown] == rows
    # The audit API takes the opaque id, and the row id is no id at all.
    assert client.get(f"/api/v1/requests/{shown[0]}/audit", headers=h).json()[
        "request"]["id"] == shown[0]
    assert client.get(f"/api/v1/requests/{rows[0]}/audit", headers=h).status_code == 404


# -- failed key attempts, headers --------------------------------------------------------------
def test_failed_key_attempts_are_limited_per_address(settings: Settings) -> None:
    limited = settings.model_copy(update={"api_failed_auth_per_minute": 3})
    good = _key(settings, "hard-guess", "submitter")
    forged = good[:-4] + "AAAA"
    with TestClient(create_app(limited), client=("10.16.9.1", 1)) as guesser, \
            TestClient(create_app(limited), client=("10.16.9.2", 1)) as bystander:
        codes = [guesser.get("/api/v1/me", headers=_auth(forged)).status_code
                 for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        # Blocked means no key is checked from there, the right one included.
        blocked = guesser.get("/api/v1/me", headers=_auth(good))
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        login = guesser.post("/audit/login", data={"key": forged},
                             headers={"Origin": "http://testserver"})
        assert login.status_code == 429
        # Another address is not held back.
        assert bystander.get("/api/v1/me", headers=_auth(good)).status_code == 200


def test_security_headers_on_api_responses_and_a_strict_policy_on_pages(
        client: TestClient, settings: Settings) -> None:
    h = _auth(_key(settings, "hard-headers", "auditor"))
    for answer in (client.get("/api/v1/me", headers=h), client.get("/api/v1/me"),
                   client.get("/v1/files/file-%00", headers=h)):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == API_POLICY
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["referrer-policy"] == "no-referrer"
    page = client.get("/audit/login")
    assert page.headers["content-security-policy"] == PAGES_POLICY
    assert "script-src" not in PAGES_POLICY and "'unsafe-inline'" not in PAGES_POLICY
    assert "<script" not in page.text and "style=" not in page.text


# -- the registry ------------------------------------------------------------------------
def test_a_model_registered_while_the_api_runs_can_be_submitted_to(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from ops.cli_models import models
    from orchestration.registry import forget_cached
    from orchestration.settings import reset_settings
    from tests.conftest import fresh_database

    with fresh_database("_api_registry") as url:
        own = settings.model_copy(update={"database_url": url, "registry_path": None})
        monkeypatch.setenv("BLENDQ_DATABASE_URL", url)
        monkeypatch.delenv("BLENDQ_REGISTRY_PATH", raising=False)
        reset_settings()
        forget_cached()
        try:
            with TestClient(create_app(own), raise_server_exceptions=False) as client:
                h = _auth(_key(own, "hard-registry", "submitter"))
                job = {"requests": [{"custom_id": "a", "instruction": "Hi"}],
                       "options": {"models": ["late-gen"]}}
                before = client.post("/api/v1/jobs", headers=h, json=job)
                assert before.status_code == 400 and "late-gen" in before.text, before.text
                for name, role, backend, path, extra in (
                        ("late-gen", "generator", "transformers", "tiny-a", []),
                        ("late-ranker", "ranker", "pairranker", "tiny-ranker", ["--default"]),
                        ("late-fuser", "fuser", "genfuser", "tiny-fuser", ["--default"])):
                    done = CliRunner().invoke(models, [
                        "register", name, "--role", role, "--backend", backend, "--path",
                        f"builtin:{path}", *extra])
                    assert done.exit_code == 0, done.output
                # The same server, not restarted: it reads the registry workers read.
                after = client.post("/api/v1/jobs", headers=h, json=job)
                assert after.status_code == 201, after.text
                with session_scope(url) as session:
                    stored = session.get(Job, after.json()["id"])
                    assert stored is not None and stored.models == ["late-gen"]
        finally:
            reset_settings()
            forget_cached()
