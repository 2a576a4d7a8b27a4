"""A running blendq: real RabbitMQ (a vhost of its own), real PostgreSQL, and the
dispatcher and worker processes started with the same commands admins use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kombu import Connection

from orchestration.settings import Settings
from tests.conftest import fresh_database

REPO = Path(__file__).resolve().parents[2]
GENERATORS = ("tiny-a", "tiny-b", "tiny-c")
START_TIMEOUT = 120


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def start(self, name: str, *args: str, ready: str) -> None:
        log = self.logs / f"{name}.log"
        if log.exists():
            # A restart: keep the old log beside, and wait for this process's own marker.
            log.rename(log.with_name(f"{name}.{time.time_ns()}.log"))
        handle = log.open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=REPO, env=self.env, stdout=handle,
            stderr=subprocess.STDOUT)
        self._wait_for(name, log, ready)

    def _wait_for(self, name: str, log: Path, marker: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if marker in log.read_text(errors="replace"):
                return
            if self.processes[name].poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown, no ack, no cleanup, as when a machine dies."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own, so no other worker on the machine takes its tasks."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: RabbitMQ must be installed (ops/scripts/services.sh)")
    vhost = f"blendq-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@contextmanager
def running_stack(settings: Settings, name: str, logs: Path) -> Iterator[Stack]:
    """Dispatcher and workers on their own database and vhost. The database matters too:
    a dispatcher relays whatever it finds in the outbox, so two stacks (or a stack and the
    in-process tests) sharing one would run each other's jobs."""
    with fresh_database(f"_{name}") as database_url, private_vhost() as broker_url:
        env = {**os.environ, "BLENDQ_ENV": "test", "BLENDQ_DATABASE_URL": database_url,
               "BLENDQ_BROKER_URL": broker_url,
               "BLENDQ_MODEL_CACHE": str(settings.model_cache),
               "BLENDQ_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        env.pop("BLENDQ_REGISTRY_PATH", None)
        stack_settings = settings.model_copy(update={"broker_url": broker_url,
                                                     "database_url": database_url})
        running = Stack(stack_settings, env, logs)
        # Build the tiny models once, before several processes want them at once.
        from workers.tiny_models import ensure_tiny_models

        ensure_tiny_models(settings.model_cache / "tiny")
        try:
            running.start("dispatcher", "dispatcher", "--poll", "0.5",
                          ready="dispatcher.started")
            for model in GENERATORS:
                running.start(f"gen-{model}", "worker", "generate", "--model", model,
                              ready=" ready.")
            running.start("rank", "worker", "rank", ready=" ready.")
            running.start("fuse", "worker", "fuse", ready=" ready.")
            yield running
        finally:
            for process in list(running.processes):
                running.stop(process)
            print(f"worker logs in {logs}")


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(settings, "stack", tmp_path_factory.mktemp("logs")) as running:
        yield running


def queue_exists(broker_url: str, name: str) -> bool:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue=name, passive=True)
        except Exception:
            return False
        return True
