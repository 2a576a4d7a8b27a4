"""Jobs end whatever happens to their messages (real PostgreSQL, RabbitMQ and workers):

- a generator queue purged behind blendq's back mid-job: the sweeper re-publishes the lost
  chunks and they complete, with exact rows;
- messages dead-lettered through the quorum queue's delivery limit: the same, and
  requeueing the dead letters afterwards duplicates nothing;
- the fuse hop that cannot be published (the broker away for the rank task and the
  dispatcher): the ranking stays, no request fails, and the chunk fuses once the broker
  is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection
from sqlmodel import Session, col, create_engine, select

from db.models import Chunk, ChunkStage, Outbox, OutboxStatus, Ranking, Request, RequestStatus
from ops.bench.stack import rabbitmqctl, stored_counts, wait_for_job, write_prompts
from orchestration.celery_app import configure, configured_settings
from orchestration.settings import Settings
from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration
READY = " ready."
# Short bounds so lost messages are noticed within seconds; enough sweeps that the
# broker refusing the fuse hop for a while does not exhaust them.
LIVENESS_ENV = {"BLENDQ_CHUNK_START_TIMEOUT": "3", "BLENDQ_CHUNK_LEASE_SECONDS": "3",
                "BLENDQ_SWEEP_INTERVAL": "1", "BLENDQ_CHUNK_MAX_SWEEPS": "6",
                "BLENDQ_QUORUM_QUEUES": "true", "BLENDQ_MAX_DELIVERIES": "2"}


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Dispatcher, tiny-b, tiny-c, rank and fuse; tiny-a's worker is started by the tests."""
    with running_stack(settings, "liveness", tmp_path_factory.mktemp("logs"),
                       env=LIVENESS_ENV, start=False) as stack:
        stack.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        for model in ("tiny-b", "tiny-c"):
            stack.launch(f"gen-{model}", "worker", "generate", "--model", model, ready=READY)
        stack.launch("rank", "worker", "rank", ready=READY)
        stack.launch("fuse", "worker", "fuse", ready=READY)
        stack.wait_ready()
        yield stack


def vhost(stack: Stack) -> str:
    return stack.settings.broker_url.rsplit("/", 1)[1]


def ready_messages(stack: Stack, queue: str) -> int:
    with Connection(stack.settings.broker_url) as conn:
        try:
            return int(conn.channel().queue_declare(queue=queue, passive=True)[1])
        except Exception:
            return 0


def wait_until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def submit(stack: Stack, tmp_path: Path, n: int, name: str) -> str:
    prompts = write_prompts(tmp_path / f"{name}.jsonl", n)
    return stack.manage("jobs", "submit", str(prompts), "--models", "tiny-a,tiny-b,tiny-c",
                        "--chunk-size", "4").stdout.strip()


def chunks_of(stack: Stack, job_id: str) -> list[Chunk]:
    engine = create_engine(stack.settings.database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(Chunk).where(Chunk.job_id == job_id)
                                     .order_by(col(Chunk.id))).all())
    finally:
        engine.dispose()


def assert_exact(stack: Stack, job_id: str, n: int) -> None:
    job = wait_for_job(stack.settings.database_url, job_id, timeout=180)
    assert (job.status, job.total, job.completed, job.failed) == ("completed", n, n, 0)
    # Three candidates each, every ordered pair compared once, one ranking and fusion.
    assert stored_counts(stack.settings.database_url, job_id) == {
        "candidate": 3 * n, "comparison": 6 * n, "ranking": n, "fusion": n}


def test_a_purged_generator_queue_does_not_leave_the_job_running(live: Stack,
                                                                 tmp_path: Path) -> None:
    job_id = submit(live, tmp_path, 16, "purged")
    wait_until(lambda: ready_messages(live, "gen.tiny-a") == 4, "4 chunks waiting on tiny-a")
    rabbitmqctl("purge_queue", "-p", vhost(live), "gen.tiny-a")
    assert ready_messages(live, "gen.tiny-a") == 0
    live.start("gen-tiny-a", "worker", "generate", "--model", "tiny-a", ready=READY)
    assert_exact(live, job_id, 16)
    chunks = chunks_of(live, job_id)
    assert [c.status for c in chunks] == ["done"] * 4
    # Each purged chunk was re-published by the sweeper, within its bound.
    assert all(1 <= c.sweeps <= 2 for c in chunks), [c.sweeps for c in chunks]


def test_dead_lettered_chunks_complete_and_requeued_letters_duplicate_nothing(
        live: Stack, tmp_path: Path) -> None:
    live.stop("gen-tiny-a")
    job_id = submit(live, tmp_path, 8, "dead")
    wait_until(lambda: ready_messages(live, "gen.tiny-a") == 2, "2 chunks waiting on tiny-a")
    # A consumer that gives every message back, as a worker that crashes on it would: the
    # quorum queue's delivery limit (2) dead-letters each.
    with Connection(live.settings.broker_url) as conn:
        channel = conn.channel()
        deadline = time.monotonic() + 60
        while ready_messages(live, "blendq.dead") < 2 and time.monotonic() < deadline:
            message = channel.basic_get(queue="gen.tiny-a", no_ack=False)
            if message is None:
                time.sleep(0.1)
                continue
            channel.basic_reject(message.delivery_tag, requeue=True)
    assert ready_messages(live, "blendq.dead") >= 2
    live.start("gen-tiny-a", "worker", "generate", "--model", "tiny-a", ready=READY)
    assert_exact(live, job_id, 8)
    assert all(c.sweeps >= 1 for c in chunks_of(live, job_id))

    dead = json.loads(live.manage("queues", "dead", "list", "--json").stdout)
    assert {m["kwargs"]["chunk_id"] for m in dead} >= {c.id for c in chunks_of(live, job_id)}
    live.manage("queues", "dead", "requeue", "--all")
    # The requeued messages run, find their chunks done, and store nothing.
    wait_until(lambda: ready_messages(live, "gen.tiny-a") == 0, "requeued letters consumed")
    time.sleep(3)
    assert_exact(live, job_id, 8)


def test_a_fuse_hop_that_cannot_be_published_keeps_the_ranking_and_fuses_later(
        live: Stack, tmp_path: Path) -> None:
    if "gen-tiny-a" not in live.processes:
        live.start("gen-tiny-a", "worker", "generate", "--model", "tiny-a", ready=READY)
    live.stop("rank")
    job_id = submit(live, tmp_path, 4, "unpublished")
    wait_until(lambda: [c.stage for c in chunks_of(live, job_id)] == [ChunkStage.RANK],
               "generation done, the rank message waiting")
    [chunk] = chunks_of(live, job_id)
    assert chunk.id is not None
    # The broker is away for every publisher: no dispatcher, and the rank task's own
    # publish goes to a port where nothing listens (all of Celery's publish retries fail).
    live.stop("dispatcher")
    away = live.settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:9//"})
    before = configured_settings()
    configure(away)
    try:
        from workers.ranking.tasks import rank_chunk

        assert rank_chunk(away, job_id, chunk.id)["ranked"] == 4
    finally:
        configure(before)
    engine = create_engine(live.settings.database_url)
    with Session(engine) as session:
        ids = select(Request.id).where(Request.job_id == job_id)
        assert len(session.exec(select(Ranking).where(col(Ranking.request_id).in_(ids))).all()) == 4
        statuses = session.exec(select(Request.status).where(Request.job_id == job_id)).all()
        [hop] = session.exec(select(Outbox).where(
            Outbox.job_id == job_id, col(Outbox.dedup_key).startswith("fuse:"))).all()
    engine.dispose()
    assert set(statuses) == {RequestStatus.PENDING}
    assert (hop.status, hop.attempts) == (OutboxStatus.PENDING, 0)
    assert hop.last_error
    # The broker is back for the dispatcher: the hop goes out and the chunk fuses.
    live.start("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
    assert_exact(live, job_id, 4)
    live.start("rank", "worker", "rank", ready=READY)
