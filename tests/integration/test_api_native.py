"""blendq's native API against ``manage.py serve`` beside real workers: an inline job, its
status, its streamed results (the same bytes as ``jobs results``), the audit view of a
request (the same as ``audit show``), a label that ``audit export`` then contains, and
idempotency keys on every create."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.api.public_ids import request_ids
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
TENANT = "native-co"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Native:
    stack: Stack
    server: ApiServer
    submitter: httpx.Client
    auditor: httpx.Client
    job: dict[str, Any]


def inline_requests(n: int) -> list[dict[str, Any]]:
    half = [{"custom_id": f"n-{i}", "instruction": f"Question {i}: name a colour.",
             "input": f"context {i}", "params": {"max_new_tokens": 12}} for i in range(n)]
    # OpenAI Batch lines are accepted inline too.
    return [*half, {"custom_id": "chat-0", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "Name a fruit."}]}}]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def native(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Native]:
    with running_api(stack, tmp_path_factory.mktemp("api-native")) as server:
        submitter = server.client(server.key(TENANT, "submitter"))
        out = stack.manage("keys", "create", "--tenant", TENANT, "--role", "auditor",
                           "--name", "ana", "--json")
        auditor = server.client(json.loads(out.stdout)["key"])
        created = submitter.post("/api/v1/jobs", json={
            "requests": inline_requests(2),
            "options": {"models": ["tiny-a", "tiny-b", "tiny-c"], "chunk_size": 2}},
            headers={"Idempotency-Key": "native-job-1"})
        assert created.status_code == 201, created.text
        try:
            yield Native(stack, server, submitter, auditor, created.json())
        finally:
            submitter.close()
            auditor.close()


def test_an_inline_job_runs_and_streams_the_stored_results(native: Native,
                                                           tmp_path: Path) -> None:
    job_id = native.job["id"]
    assert native.job["status"] == "in_progress"
    assert native.job["request_counts"]["total"] == 3
    done = wait_job(native.submitter, job_id)
    assert done["status"] == "completed" and done["request_counts"] == {
        "total": 3, "completed": 3, "failed": 0}
    listed = native.submitter.get("/api/v1/jobs").json()
    assert job_id in [j["id"] for j in listed["data"]]

    with native.submitter.stream("GET", f"/api/v1/jobs/{job_id}/results") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/jsonl")
        streamed = b"".join(response.iter_bytes())
    out = tmp_path / "cli.jsonl"
    native.stack.manage("jobs", "results", job_id, "-o", str(out))
    lines = [json.loads(line) for line in streamed.splitlines()]
    # The stored results, each request named by its opaque id instead of its row id.
    ids = request_ids(native.stack.settings.database_url)
    assert [{**line, "request_id": ids.decode(line["request_id"])} for line in lines] == [
        json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["n-0", "n-1", "chat-0"]
    assert all(line["fused_output"] is not None for line in lines)
    # An auditor reads jobs and results too.
    assert native.auditor.get(f"/api/v1/jobs/{job_id}/results").content == streamed


def test_the_audit_view_and_a_label_that_export_then_holds(native: Native,
                                                           tmp_path: Path) -> None:
    job_id = native.job["id"]
    wait_job(native.submitter, job_id)
    first = native.auditor.get(f"/api/v1/jobs/{job_id}/results").text.splitlines()[0]
    request_id = json.loads(first)["request_id"]  # opaque: req_ and 16 hex digits
    row_id = request_ids(native.stack.settings.database_url).decode(request_id)

    detail = native.auditor.get(f"/api/v1/requests/{request_id}/audit")
    assert detail.status_code == 200
    cli = json.loads(native.stack.manage("audit", "show", str(row_id), "--json").stdout)
    assert detail.json() == {**cli, "request": {**cli["request"], "id": request_id}}
    models = [c["model"] for c in sorted(cli["candidates"], key=lambda c: c["rank"])]

    body = {"better": models[-1], "worse": models[0], "note": "the last is right"}
    key = {"Idempotency-Key": "label-1"}
    label = native.auditor.post(f"/api/v1/requests/{request_id}/labels", json=body,
                                headers=key)
    assert label.status_code == 201, label.text
    recorded = label.json()
    assert recorded["verdict"] == "a" and recorded["author"].startswith("ana (key ")
    again = native.auditor.post(f"/api/v1/requests/{request_id}/labels", json=body,
                                headers=key)
    assert again.status_code == 200 and again.json() == recorded
    assert again.headers["idempotent-replayed"] == "true"
    ranking = native.auditor.post(f"/api/v1/requests/{request_id}/labels",
                                  json={"ranking": [cli["candidates"][0]["candidate_id"],
                                                    models[0]]})
    assert ranking.status_code == 201 and ranking.json()["verdict"] == "ranking"
    bad = native.auditor.post(f"/api/v1/requests/{request_id}/labels",
                              json={"better": "tiny-a", "worse": "tiny-zzz"})
    assert bad.status_code == 400 and "tiny-zzz" in bad.json()["error"]["message"]

    labels = native.auditor.get(f"/api/v1/requests/{request_id}/audit").json()["labels"]
    assert [lb["label_id"] for lb in labels] == [recorded["id"], ranking.json()["id"]]
    export = tmp_path / "mix.jsonl"
    native.stack.manage("audit", "export", "--job", job_id, "--format", "mixinstruct", "-o",
                        str(export))
    exported = {line["request_id"]: line for line in map(json.loads,
                                                         export.read_text().splitlines())}
    mine = exported[row_id]["labels"][0]
    assert (mine["label_id"], mine["author"], mine["note"]) == (
        recorded["id"], recorded["author"], "the last is right")
    human = {c["model"]: c["scores"]["human"] for c in exported[row_id]["candidates"]}
    assert human[models[-1]] > human[models[0]]


def test_the_same_idempotency_key_never_makes_a_second_job(native: Native) -> None:
    replay = native.submitter.post("/api/v1/jobs", json={"requests": inline_requests(5)},
                                   headers={"Idempotency-Key": "native-job-1"})
    assert replay.status_code == 200 and replay.json()["id"] == native.job["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    # Concurrent creates with one new key: one job, every answer names it.
    def create(_: int) -> httpx.Response:
        return native.submitter.post("/api/v1/jobs", json={"requests": inline_requests(1)},
                                     headers={"Idempotency-Key": "native-race"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(create, range(4)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    race_id = answers[0].json()["id"]
    assert native.submitter.post(f"/api/v1/jobs/{race_id}/cancel").json()["status"] in (
        "cancelling", "cancelled")
    assert wait_job(native.submitter, race_id)["status"] == "cancelled"
