"""Readiness probes follow PostgreSQL: the API's /readyz and the dispatcher's answer 503
naming it while a private server is stopped, and 200 again once it is back; liveness
(/healthz) stays 200 throughout, so an orchestrator waits instead of restarting them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from ops.bench.stack import Stack, private_vhost, stack_env
from orchestration.settings import Settings
from tests.faults.private_services import private_postgres
from tests.integration.api_server import free_port, running_api

pytestmark = pytest.mark.integration


def _wait_status(url: str, status: int, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url, timeout=30)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_readyz_is_503_naming_postgresql_while_it_is_stopped(settings: Settings,
                                                            tmp_path: Path) -> None:
    from ops import dbadmin

    with private_postgres() as postgres, private_vhost() as broker_url:
        database_url = postgres.create_database("blendq")
        dbadmin.upgrade(database_url)
        metrics_port = free_port()
        stack = Stack(settings.model_copy(update={"database_url": database_url,
                                                  "broker_url": broker_url}),
                      stack_env(settings, database_url, broker_url,
                                {"BLENDQ_METRICS_PORT": str(metrics_port)}), tmp_path)
        try:
            stack.start("dispatcher", "dispatcher", ready="dispatcher.started")
            with running_api(stack, tmp_path) as api:
                probes = {"api": f"{api.base_url}/readyz",
                          "dispatcher": f"http://127.0.0.1:{metrics_port}/readyz"}
                for name, url in probes.items():
                    response = _wait_status(url, 200)
                    assert response.status_code == 200, (name, response.text)
                postgres.stop()
                for name, url in probes.items():
                    response = _wait_status(url, 503)
                    assert response.status_code == 503, (name, response.text)
                    body = response.json()
                    assert body["failed"] == ["postgresql"], (name, body)
                    assert body["checks"]["rabbitmq"] == "ok"
                assert httpx.get(f"{api.base_url}/healthz", timeout=30).status_code == 200
                assert httpx.get(f"http://127.0.0.1:{metrics_port}/healthz",
                                 timeout=30).status_code == 200
                postgres.start()
                for name, url in probes.items():
                    response = _wait_status(url, 200)
                    assert response.status_code == 200, (name, response.text)
        finally:
            stack.stop_all()
