"""Who may do what over HTTP, against ``manage.py serve`` beside real workers: each role
against each endpoint, another tenant's ids (404, never their data), a revoked key, the
upload size limit, and no key material in the server's log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
OURS, THEIRS = "sec-ours", "sec-theirs"
ROLES = ("submitter", "auditor", "admin")
BODY_LIMIT = 64 * 1024
CHAT = "/v1/chat/completions"
LINE = {"custom_id": "s-0", "method": "POST", "url": CHAT,
        "body": {"max_tokens": 8, "messages": [{"role": "user", "content": "Name a colour."}]}}
# Bad on purpose where an allowed create would otherwise start work on the shared workers:
# a batch or job that fails validation is still created (2xx) and runs nothing.
INVALID_FILE = b'{"custom_id": 1}\n'


@dataclass
class Tenant:
    file: str
    batch: str
    job: str
    request: str  # its opaque id
    output_file: str


@dataclass
class World:
    server: ApiServer
    log_dir: Path
    keys: dict[str, str]  # our tenant's keys by role
    ours: Tenant
    theirs: Tenant
    their_admin: str

    def client(self, role: str | None) -> httpx.Client:
        return self.server.client(self.keys[role] if role else None)


def _upload(client: httpx.Client, content: bytes) -> str:
    response = client.post("/v1/files", data={"purpose": "batch"},
                           files={"file": ("in.jsonl", content, "application/jsonl")})
    assert response.status_code == 200, response.text
    value: str = response.json()["id"]
    return value


def _tenant(server: ApiServer, admin_key: str) -> Tenant:
    """A finished batch and a finished native job of one tenant, made with its admin key."""
    with server.client(admin_key) as client:
        file_id = _upload(client, json.dumps(LINE).encode() + b"\n")
        batch = client.post("/v1/batches", json={
            "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h",
            "metadata": {"blendq.models": "tiny-a,tiny-b"}}).json()["id"]
        job = client.post("/api/v1/jobs", json={
            "requests": [{"custom_id": "j-0", "instruction": "Name a fruit."}],
            "options": {"models": "tiny-a,tiny-b"}}).json()["id"]
        deadline = time.monotonic() + 180
        while True:
            done = client.get(f"/v1/batches/{batch}").json()
            if done["status"] == "completed" and client.get(
                    f"/api/v1/jobs/{job}").json()["status"] == "completed":
                break
            assert time.monotonic() < deadline, done
            time.sleep(0.3)
        line = client.get(f"/api/v1/jobs/{job}/results").text.splitlines()[0]
        return Tenant(file_id, batch, job, json.loads(line)["request_id"],
                      done["output_file_id"])


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    log_dir = tmp_path_factory.mktemp("api-security")
    with running_api(stack, log_dir,
                     extra_env={"BLENDQ_API_MAX_BODY_BYTES": str(BODY_LIMIT)}) as server:
        keys = {role: server.key(OURS, role) for role in ROLES}
        their_admin = server.key(THEIRS, "admin")
        yield World(server, log_dir, keys, _tenant(server, keys["admin"]),
                    _tenant(server, their_admin), their_admin)


# -- each role against each endpoint ---------------------------------------------------------
Call = Callable[[httpx.Client, World], httpx.Response]
READERS = {"submitter", "auditor", "admin"}
SUBMITTERS = {"submitter", "admin"}
AUDITORS = {"auditor", "admin"}


def _fresh_file(world: World) -> str:
    with world.client("admin") as admin:
        return _upload(admin, INVALID_FILE)


ENDPOINTS: list[tuple[str, Call, set[str]]] = [
    ("POST /v1/files", lambda c, w: c.post("/v1/files", data={"purpose": "batch"}, files={
        "file": ("x.jsonl", INVALID_FILE, "application/jsonl")}), SUBMITTERS),
    ("GET /v1/files", lambda c, w: c.get("/v1/files"), READERS),
    ("GET /v1/files/ID", lambda c, w: c.get(f"/v1/files/{w.ours.file}"), READERS),
    ("GET /v1/files/ID/content",
     lambda c, w: c.get(f"/v1/files/{w.ours.output_file}/content"), READERS),
    ("DELETE /v1/files/ID", lambda c, w: c.delete(f"/v1/files/{_fresh_file(w)}"), SUBMITTERS),
    ("POST /v1/batches", lambda c, w: c.post("/v1/batches", json={
        "input_file_id": _fresh_file(w), "endpoint": CHAT, "completion_window": "24h"}),
     SUBMITTERS),
    ("GET /v1/batches", lambda c, w: c.get("/v1/batches"), READERS),
    ("GET /v1/batches/ID", lambda c, w: c.get(f"/v1/batches/{w.ours.batch}"), READERS),
    ("POST /v1/batches/ID/cancel",
     lambda c, w: c.post(f"/v1/batches/{w.ours.batch}/cancel"), SUBMITTERS),
    ("GET /api/v1/me", lambda c, w: c.get("/api/v1/me"), READERS),
    ("POST /api/v1/jobs", lambda c, w: c.post("/api/v1/jobs", json={"requests": ["bad"]}),
     SUBMITTERS),
    ("GET /api/v1/jobs", lambda c, w: c.get("/api/v1/jobs"), READERS),
    ("GET /api/v1/jobs/ID", lambda c, w: c.get(f"/api/v1/jobs/{w.ours.job}"), READERS),
    ("GET /api/v1/jobs/ID/results",
     lambda c, w: c.get(f"/api/v1/jobs/{w.ours.job}/results"), READERS),
    ("POST /api/v1/jobs/ID/cancel",
     lambda c, w: c.post(f"/api/v1/jobs/{w.ours.job}/cancel"), SUBMITTERS),
    ("GET /api/v1/requests/ID/audit",
     lambda c, w: c.get(f"/api/v1/requests/{w.ours.request}/audit"), AUDITORS),
    ("POST /api/v1/requests/ID/labels",
     lambda c, w: c.post(f"/api/v1/requests/{w.ours.request}/labels",
                         json={"tie": ["tiny-a", "tiny-b"]}), AUDITORS),
]


@pytest.mark.parametrize(("name", "call", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_each_role_against_each_endpoint(world: World, name: str, call: Call,
                                         allowed: set[str]) -> None:
    for role in ROLES:
        with world.client(role) as client:
            response = call(client, world)
        if role in allowed:
            assert 200 <= response.status_code < 300, (name, role, response.text)
        else:
            assert response.status_code == 403, (name, role, response.text)
            assert response.json()["error"]["type"] == "permission_error"
    with world.client(None) as anonymous:
        assert call(anonymous, world).status_code == 401, name


# -- another tenant's ids --------------------------------------------------------------------
def _foreign_calls(t: Tenant) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/v1/files/{t.file}", {}), ("GET", f"/v1/files/{t.file}/content", {}),
        ("GET", f"/v1/files/{t.output_file}", {}),
        ("GET", f"/v1/files/{t.output_file}/content", {}),
        ("DELETE", f"/v1/files/{t.file}", {}),
        ("POST", "/v1/batches", {"json": {"input_file_id": t.file, "endpoint": CHAT,
                                          "completion_window": "24h"}}),
        ("GET", f"/v1/batches/{t.batch}", {}), ("POST", f"/v1/batches/{t.batch}/cancel", {}),
        ("GET", f"/api/v1/jobs/{t.job}", {}), ("GET", f"/api/v1/jobs/{t.job}/results", {}),
        ("POST", f"/api/v1/jobs/{t.job}/cancel", {}),
        # A job id is a batch id too: the native job of the other tenant, asked as a batch.
        ("GET", f"/v1/batches/{t.job}", {}),
        ("GET", f"/api/v1/requests/{t.request}/audit", {}),
        ("POST", f"/api/v1/requests/{t.request}/labels", {"json": {"tie": ["tiny-a",
                                                                             "tiny-b"]}}),
    ]


def test_another_tenants_ids_are_404_and_reveal_nothing(world: World) -> None:
    theirs = world.theirs
    secrets = [theirs.file, theirs.batch, theirs.job, theirs.output_file, THEIRS,
               "Name a colour", "Name a fruit"]
    for role in ROLES:
        with world.client(role) as client:
            for method, path, extra in _foreign_calls(theirs):
                response = client.request(method, path, **extra)
                # Roles are checked first: a role without the right gets 403 whatever
                # the id, which tells nothing about the id either.
                assert response.status_code in (403, 404), (role, method, path)
                if response.status_code == 404:
                    assert response.json()["error"]["code"] == "not_found"
                # An error may repeat the id asked for, and nothing else of theirs.
                asked = path + json.dumps(extra)
                leaked = [s for s in secrets if s not in asked and s in response.text]
                assert not leaked, (role, method, path, response.text)
            # Lists never show them, and their ids are no cursor into ours.
            for path in ("/v1/files", "/v1/batches", "/api/v1/jobs"):
                listed = client.get(path).text
                assert not any(s in listed for s in secrets), path
            for path, cursor in (("/v1/batches", theirs.batch), ("/v1/files", theirs.file),
                                 ("/api/v1/jobs", theirs.job)):
                assert client.get(path, params={"after": cursor}).status_code == 400
    # Still there for their own tenant, untouched.
    with world.server.client(world.their_admin) as owner:
        assert owner.get(f"/v1/files/{theirs.file}").status_code == 200
        assert owner.get(f"/v1/batches/{theirs.batch}").json()["status"] == "completed"
        labels = owner.get(f"/api/v1/requests/{theirs.request}/audit").json()["labels"]
        assert labels == []


# -- keys, limits, logs ----------------------------------------------------------------------
def test_a_revoked_key_is_refused(world: World) -> None:
    out = world.server.stack.manage("keys", "create", "--tenant", OURS, "--role", "submitter",
                                    "--json")
    created = json.loads(out.stdout)
    with world.server.client(created["key"]) as client:
        assert client.get("/api/v1/me").status_code == 200
        world.server.stack.manage("keys", "revoke", created["key_id"])
        refused = client.get("/api/v1/me")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get(f"/v1/batches/{world.ours.batch}").status_code == 401


def test_uploads_and_bodies_over_the_limit_are_413(world: World) -> None:
    big = json.dumps(LINE).encode() + b"\n"
    big = big * (BODY_LIMIT // len(big) + 1)
    with world.client("submitter") as client:
        refused = client.post("/v1/files", data={"purpose": "batch"},
                              files={"file": ("big.jsonl", big, "application/jsonl")})
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"
        # (Invalid too, so that were the limit not kept the job would still run nothing.)
        oversized = {"requests": [{"custom_id": "big", "instruction": "x" * BODY_LIMIT}, 1]}
        assert client.post("/api/v1/jobs", json=oversized).status_code == 413
        # Under the limit it goes through.
        half = big[: big.rindex(b"\n", 0, BODY_LIMIT // 2) + 1]  # whole lines: JSONL
        assert client.post("/v1/files", data={"purpose": "batch"}, files={
            "file": ("ok.jsonl", half, "application/jsonl")}).status_code == 200


def test_no_key_material_reaches_the_server_log(world: World) -> None:
    with world.client("admin") as client:  # one request more, with a bad key too
        client.get("/api/v1/me")
    with world.server.client(world.keys["admin"] + "x") as client:
        assert client.get("/api/v1/me").status_code == 401
    logs = "".join(p.read_text(errors="replace") for p in world.log_dir.glob("api-*.log"))
    assert "GET /api/v1/me" in logs  # the log is the right one, with the access lines
    for key in [*world.keys.values(), world.their_admin]:
        secret = key.split("_", 2)[2]  # bq_<key id>_<secret>; the secret may hold "_"
        assert secret not in logs and key not in logs
    assert "Bearer" not in logs
