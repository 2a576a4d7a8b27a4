"""Restart RabbitMQ, then PostgreSQL, in the middle of a job: once the server is back, the
job completes with every request accounted for and no row stored twice.

The servers restarted are private ones the module starts (private_services.py), with the
usual dispatcher and worker processes pointed at them; the machine's shared servers are
never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy.exc
from kombu import Connection
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, create_engine, select

from db.models import (
    Candidate,
    Chunk,
    Comparison,
    Fusion,
    Job,
    Outbox,
    OutboxStatus,
    Ranking,
    Request,
    utcnow,
)
from orchestration.celery_app import DEAD_QUEUE
from orchestration.settings import Settings
from tests.faults.private_services import (
    PrivatePostgres,
    PrivateRabbitMQ,
    private_postgres,
    private_rabbitmq,
)
from tests.integration.conftest import GENERATORS, Stack, running_stack
from tests.integration.test_pipeline import write_prompts

pytestmark = pytest.mark.integration
# Six chunks: when the first candidates are stored, five are still to go through.
PROMPTS = 24
CHUNK_SIZE = 4
# How long each server stays down (RabbitMQ's own start adds about 7 s): long enough for
# every process to notice (workers lose their connections, tasks hit errors and retry),
# well short of the retry budgets (task retries and chord counting wait about a minute).
DOWN_SECONDS = 3.0
JOB_TIMEOUT = 150
TERMINAL = {"completed", "failed", "cancelled", "expired"}


@dataclass
class Servers:
    postgres: PrivatePostgres
    rabbitmq: PrivateRabbitMQ


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with private_postgres() as postgres, private_rabbitmq() as rabbitmq:
        yield Servers(postgres, rabbitmq)


@pytest.fixture(scope="module")
def restart_stack(settings: Settings, servers: Servers,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from ops import dbadmin

    database_url = servers.postgres.create_database("blendq")
    dbadmin.upgrade(database_url)
    with running_stack(settings, "restarts", tmp_path_factory.mktemp("restart-logs"),
                       database_url=database_url,
                       broker_url=servers.rabbitmq.url()) as running:
        yield running


def _engine(url: str) -> Engine:
    # pre_ping: this test's own pooled connections die with the server too.
    return create_engine(url, pool_pre_ping=True)


def _count(session: Session, model: type, job_id: str) -> int:
    ids = select(Request.id).where(Request.job_id == job_id)
    return session.exec(select(func.count()).select_from(model)
                        .where(col(model.request_id).in_(ids))).one()


def _wait_mid_flight(engine: Engine, job_id: str) -> dict[str, int]:
    """Until the first chunk's candidates are being written and no chunk is fused: every
    stage then has work queued or in its hands."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with Session(engine) as session:
            progress = {"candidates": _count(session, Candidate, job_id),
                        "rankings": _count(session, Ranking, job_id),
                        "fusions": _count(session, Fusion, job_id)}
        if progress["candidates"] > 0:
            return progress
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never started generating")


def _wait_done(engine: Engine, job_id: str) -> Job:
    deadline = time.monotonic() + JOB_TIMEOUT
    status = "?"
    while time.monotonic() < deadline:
        try:
            with Session(engine) as session:
                job = session.get(Job, job_id)
                assert job is not None
                status = job.status
                if job.status in TERMINAL:
                    return job
        except sqlalchemy.exc.OperationalError:
            pass  # still coming back
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {status} after {JOB_TIMEOUT}s")


def _restart(servers: Servers, service: str) -> None:
    if service == "rabbitmq":
        servers.rabbitmq.stop()
        time.sleep(DOWN_SECONDS)
        servers.rabbitmq.start()
    else:
        servers.postgres.stop("fast")
        time.sleep(DOWN_SECONDS)
        servers.postgres.start()


def _dead_letters(broker_url: str) -> int:
    with Connection(broker_url) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=DEAD_QUEUE,
                                                          passive=True).message_count)
        except Exception:
            return 0  # never declared: nothing was dead-lettered


@pytest.mark.parametrize("service", ["rabbitmq", "postgres"])
def test_restart_mid_job(restart_stack: Stack, servers: Servers, tmp_path: Path,
                         service: str) -> None:
    stack = restart_stack
    # Longer generations than the default keep the job running well past the restart.
    prompts = write_prompts(tmp_path / "in.jsonl", PROMPTS, params={"max_new_tokens": 48})
    job_id = stack.manage("jobs", "submit", str(prompts), "--models", ",".join(GENERATORS),
                          "--chunk-size", str(CHUNK_SIZE)).stdout.strip()
    engine = _engine(stack.settings.database_url)
    at_restart = _wait_mid_flight(engine, job_id)
    stopped_at = utcnow()
    started = time.monotonic()
    _restart(servers, service)
    print(f"{service} restarted in {time.monotonic() - started:.1f}s at {at_restart}")

    job = _wait_done(engine, job_id)
    assert job.completed_at is not None and job.completed_at > stopped_at, (
        "the job ended before the restart: nothing was tested")
    assert (job.status, job.total, job.completed, job.failed) == (
        "completed", PROMPTS, PROMPTS, 0), job.errors
    with Session(engine) as session:
        statuses = session.exec(select(Request.status).where(Request.job_id == job_id)).all()
        assert sorted(statuses) == ["completed"] * PROMPTS
        # Unique keys make a duplicate impossible to store; exact counts show that nothing
        # is missing either (3 candidates, 6 ordered pairs, 1 ranking, 1 fusion each).
        assert _count(session, Candidate, job_id) == PROMPTS * 3
        assert _count(session, Comparison, job_id) == PROMPTS * 6
        assert _count(session, Ranking, job_id) == PROMPTS
        assert _count(session, Fusion, job_id) == PROMPTS
        chunks = session.exec(select(Chunk.status).where(Chunk.job_id == job_id)).all()
        assert len(chunks) == PROMPTS // CHUNK_SIZE
        assert set(chunks) == {"done"}, chunks
        unsent = session.exec(select(Outbox.id, Outbox.status, Outbox.last_error)
                              .where(Outbox.job_id == job_id,
                                     Outbox.status != OutboxStatus.SENT)).all()
        assert not unsent
    engine.dispose()
    assert _dead_letters(stack.settings.broker_url) == 0
