"""The guards every API route sits behind: keys, roles, rate and body size (in-process
server on the run's real database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from db.api_keys import create_key, revoke_key
from db.engine import session_scope
from ops.api.app import create_app
from ops.api.limits import BodySizeLimit
from orchestration.settings import Settings


def _key(settings: Settings, tenant: str, role: str) -> tuple[str, str]:
    with session_scope(settings.database_url) as session:
        created = create_key(session, tenant, role)
    return created.key_id, created.secret


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as value:
        yield value


def test_no_key_or_a_bad_key_is_401_in_openai_error_shape(client: TestClient) -> None:
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"
    response = client.get("/api/v1/me", headers={"Authorization": "Bearer bq_nope"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_a_key_identifies_its_tenant_and_role_until_revoked(client: TestClient,
                                                            settings: Settings) -> None:
    key_id, secret = _key(settings, "guards-a", "auditor")
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    assert response.json() == {"key_id": key_id, "tenant": "guards-a", "role": "auditor"}
    with session_scope(settings.database_url) as session:
        revoke_key(session, key_id)
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}
                      ).status_code == 401


def test_the_rate_limit_answers_429_with_retry_after(settings: Settings) -> None:
    limited = settings.model_copy(update={"api_rate_limit_per_minute": 3})
    _, secret = _key(settings, "guards-b", "submitter")
    _, other = _key(settings, "guards-b", "submitter")
    with TestClient(create_app(limited)) as client:
        codes = [client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}
                            ).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
        assert int(refused.headers["retry-after"]) >= 1
        # The limit is per key: another key of the same tenant still gets through.
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {other}"}
                          ).status_code == 200
    # A second server process on the same database shares the key's bucket.
    with TestClient(create_app(limited)) as second:
        assert second.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}
                          ).status_code == 429


def test_a_body_over_the_limit_is_413_before_it_is_read(settings: Settings) -> None:
    small = settings.model_copy(update={"api_max_body_bytes": 1024})
    with TestClient(create_app(small)) as client:
        response = client.post("/api/v1/me", content=b"x" * 2048)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit() -> None:
    async def echo_length(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/", echo_length, methods=["POST"])])
    app.add_middleware(BodySizeLimit, limit=1024)

    def chunks(count: int) -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(count):
            yield b"y" * 512

    with TestClient(app) as client:
        assert client.post("/", content=chunks(2)).text == "1024"
        assert client.post("/", content=chunks(4)).status_code == 413


def test_the_openapi_description_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/me" in paths
