"""Long tasks keep their broker connection, and a hung call ends at the time limit.

An OpenAI-compatible server started here answers after several heartbeat intervals (the
heartbeat is 2 s in this stack): with the solo pool the consumer loop sent no heartbeat
while a task ran, RabbitMQ closed the connection and the message was delivered again. Two
replicas consume the slow model's queue; every prompt must reach the server exactly once.
A second model's server never answers: its task stops at BLENDQ_TASK_TIME_LIMIT, the
reason is recorded on its requests and the job ends; the worker's /healthz fails naming the
hung call until the server answers after all.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, create_engine, select

from db.models import Candidate, Request
from ops.bench.stack import stored_counts, wait_for_job, write_prompts
from orchestration.settings import Settings
from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration
READY = " ready."
SLOW_SECONDS = 14  # seven heartbeat intervals
TIME_LIMIT = 30


class Backend:
    """/slow answers every chat completion after SLOW_SECONDS; /hung only once released."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.release = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                return

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": "slow-model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                backend.seen[f"{self.path.split('/')[1]}:{prompt}"] += 1
                if self.path.startswith("/hung"):
                    backend.release.wait(300)  # then answers, so the call ends at once
                else:
                    time.sleep(SLOW_SECONDS)
                self._json({"id": "x", "object": "chat.completion", "model": "slow-model",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant",
                                                     "content": f"answer to {prompt}"}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 3}})

            def _json(self, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


REGISTRY = """
[[models]]
name = "slow"
role = "generator"
backend = "openai"
path = "http://127.0.0.1:{port}/slow/v1"
params = {{ model = "slow-model", timeout = 120, max_retries = 0 }}

[[models]]
name = "hung"
role = "generator"
backend = "openai"
path = "http://127.0.0.1:{port}/hung/v1"
params = {{ model = "slow-model", timeout = 600, max_retries = 0 }}

[[models]]
name = "tiny-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"

[[models]]
name = "tiny-fuser"
role = "fuser"
backend = "genfuser"
path = "builtin:tiny-fuser"
params = {{ num_beams = 1, max_new_tokens = 8 }}
"""


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    running = Backend()
    yield running
    running.close()


@pytest.fixture(scope="module")
def slow_stack(settings: Settings, backend: Backend,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("long")
    registry = root / "registry.toml"
    registry.write_text(REGISTRY.format(port=backend.port))
    env = {"BLENDQ_REGISTRY_PATH": str(registry), "BLENDQ_BROKER_HEARTBEAT": "2",
           "BLENDQ_TASK_TIME_LIMIT": str(TIME_LIMIT)}
    logs = root / "logs"
    logs.mkdir()
    with running_stack(settings, "long", logs, env=env, start=False) as stack:
        stack.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        for replica in ("1", "2"):
            stack.launch(f"gen-slow-{replica}", "worker", "generate", "--model", "slow",
                         ready=READY)
        stack.launch("gen-hung", "worker", "generate", "--model", "hung", ready=READY,
                     env={"BLENDQ_METRICS_PORT": str(HUNG_METRICS_PORT)})
        stack.launch("rank", "worker", "rank", ready=READY)
        stack.launch("fuse", "worker", "fuse", ready=READY)
        stack.wait_ready()
        try:
            yield stack
        finally:
            # Answer the calls still hung, so the workers' warm shutdown does not wait out
            # its 20 s for a thread that no time limit can stop.
            backend.release.set()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HUNG_METRICS_PORT = _free_port()


def _healthz() -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HUNG_METRICS_PORT}/healthz",
                                    timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


def submit(stack: Stack, path: Path, n: int, model: str) -> str:
    prompts = write_prompts(path, n)
    return stack.manage("jobs", "submit", str(prompts), "--models", model, "--chunk-size",
                        "1", "--fuser", "none").stdout.strip()


def test_a_task_longer_than_the_heartbeat_runs_once_with_two_replicas(
        slow_stack: Stack, backend: Backend, tmp_path: Path) -> None:
    job_id = submit(slow_stack, tmp_path / "slow.jsonl", 3, "slow")
    job = wait_for_job(slow_stack.settings.database_url, job_id, timeout=240)
    assert (job.status, job.completed, job.failed) == ("completed", 3, 0)
    slow = {k: v for k, v in backend.seen.items() if k.startswith("slow:")}
    assert len(slow) == 3 and set(slow.values()) == {1}, slow
    assert stored_counts(slow_stack.settings.database_url, job_id)["candidate"] == 3
    for replica in ("1", "2"):
        log = (slow_stack.logs / f"gen-slow-{replica}.log").read_text(errors="replace")
        assert "Connection to broker lost" not in log
        assert "ConnectionResetError" not in log


def test_a_hung_call_stops_at_the_time_limit_and_the_job_ends(
        slow_stack: Stack, backend: Backend, tmp_path: Path) -> None:
    started = time.monotonic()
    # One prompt: each chunk's call waits out the whole limit, one after the other.
    job_id = submit(slow_stack, tmp_path / "hung.jsonl", 1, "hung")
    job = wait_for_job(slow_stack.settings.database_url, job_id, timeout=240)
    assert (job.status, job.completed, job.failed) == ("completed", 0, 1)
    assert time.monotonic() - started >= TIME_LIMIT - 1
    engine = create_engine(slow_stack.settings.database_url)
    with Session(engine) as session:
        ids = select(Request.id).where(Request.job_id == job_id)
        errors = session.exec(select(Candidate.error).where(
            Candidate.request_id.in_(ids))).all()  # type: ignore[attr-defined]
        reasons = session.exec(select(Request.error).where(Request.job_id == job_id)).all()
    engine.dispose()
    assert len(errors) == 1
    assert all(f"task time limit ({TIME_LIMIT} s" in (e or "") for e in errors), errors
    assert all("task time limit" in (r or "") for r in reasons), reasons

    # The call is still running in the worker: liveness fails, naming it, so an
    # orchestrator restarts the process; once the server answers after all, it clears.
    status, body = _healthz()
    assert status == 503 and "model call hung past the task time limit: generation" in \
        body["checks"]["process"], body
    backend.release.set()
    deadline = time.monotonic() + 30
    while _healthz()[0] != 200:
        assert time.monotonic() < deadline, _healthz()
        time.sleep(0.5)
