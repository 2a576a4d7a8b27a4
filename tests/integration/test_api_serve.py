"""``manage.py serve`` as admins deploy it: several server processes behind a reverse
proxy that terminates TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from db.api_keys import create_key
from db.engine import session_scope
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration
RATE = 6


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with running_api(stack, tmp_path_factory.mktemp("serve"),
                     extra_env={"BLENDQ_API_RATE_LIMIT_PER_MINUTE": str(RATE)},
                     args=("--workers", "2", "--forwarded-allow-ips", "127.0.0.1")) as server:
        yield server


def _children(pid: int) -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                             .decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while listed
    return found


def test_two_server_processes_share_one_rate_limit(api: ApiServer) -> None:
    [server] = [p for name, p in api.stack.processes.items() if name.startswith("api-")]
    assert len([c for c in _children(server.pid) if "spawn" in c]) == 2
    key = api.key("serve-rate", "submitter")
    codes = []
    for _ in range(RATE * 2):
        # A connection each, so the requests spread over both processes.
        with httpx.Client(base_url=api.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            codes.append(client.get("/api/v1/me").status_code)
    assert codes == [200] * RATE + [429] * RATE


def test_behind_a_tls_proxy_the_sign_in_cookie_is_secure(api: ApiServer) -> None:
    with session_scope(api.stack.settings.database_url) as session:
        secret = create_key(session, "serve-proxy", "auditor").secret
    host = api.base_url.removeprefix("http://")
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        for proto, secure in (("https", True), ("http", False)):
            answer = client.post("/audit/login", data={"key": secret},
                                 headers={"X-Forwarded-Proto": proto,
                                          "Origin": f"{proto}://{host}"})
            assert answer.status_code == 303, answer.text
            assert ("; secure" in answer.headers["set-cookie"].lower()) is secure, proto
