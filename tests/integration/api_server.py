"""The HTTP API as admins start it (``manage.py serve``), beside a running stack."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.integration.conftest import REPO, Stack

START_TIMEOUT = 60


@dataclass
class ApiServer:
    stack: Stack
    base_url: str

    def key(self, tenant: str, role: str) -> str:
        """A new key made with ``manage.py keys create``, as an admin would."""
        out = self.stack.manage("keys", "create", "--tenant", tenant, "--role", role,
                                "--name", f"test {role}", "--json")
        value: str = json.loads(out.stdout)["key"]
        return value

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_api(stack: Stack, logs: Path, extra_env: dict[str, str] | None = None,
                args: Sequence[str] = ()) -> Iterator[ApiServer]:
    """``manage.py serve`` on a free port, with ``args`` added to its command line."""
    port = free_port()
    name = f"api-{port}"
    log = logs / f"{name}.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port), *args], cwd=REPO,
            env={**stack.env, **(extra_env or {})}, stdout=handle, stderr=subprocess.STDOUT)
    stack.processes[name] = process
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield ApiServer(stack, base_url)
    finally:
        stack.stop(name)
