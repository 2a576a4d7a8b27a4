"""A header task delivered twice counts once and fires the next stage once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import ChordPart, Chunk, Comparison, Outbox, Request
from orchestration.canvas import from_payload
from tests.integration.conftest import Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration


def test_duplicate_generate_message_changes_nothing(stack: Stack, celery_app: Celery,
                                                    tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "in.jsonl", 4)
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "4").stdout.strip()
    assert wait_for(stack.settings.database_url, job_id).status == "completed"
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as session:
        chunk = session.exec(select(Chunk).where(Chunk.job_id == job_id)).one()
        # The chord's body (rank); the fuse hop the rank task queued is keyed "fuse:".
        body = session.exec(select(Outbox).where(
            Outbox.job_id == job_id, Outbox.kind == "signature",
            col(Outbox.dedup_key).startswith("chord:"))).one()
        group_id = body.dedup_key.removeprefix("chord:")
        parts = session.exec(select(ChordPart).where(ChordPart.group_id == group_id)).all()
        comparisons = session.exec(select(func.count()).select_from(Comparison).where(
            Comparison.request_id.in_(select(Request.id).where(Request.job_id == job_id))
        )).one()

    # Publish the same message again: same task id, same group, same chord body, as
    # RabbitMQ would redeliver it after a worker died before its ack.
    app = celery_app
    model = "tiny-a"
    log = stack.logs / f"gen-{model}.log"
    part = next(p for p in parts if f"[{p.task_id}] succeeded" in log.read_text())
    with app.connection_for_write(stack.settings.broker_url) as connection:
        app.signature("blendq.generate",
                      kwargs={"job_id": job_id, "chunk_id": chunk.id, "model": model},
                      queue=f"gen.{model}", routing_key=f"gen.{model}", immutable=True,
                      ).apply_async(task_id=part.task_id, group_id=group_id,
                                    chord=from_payload(app, body.payload),
                                    connection=connection)
    deadline = time.monotonic() + 60
    while log.read_text().count(f"[{part.task_id}] succeeded") < 2:
        assert time.monotonic() < deadline, "the duplicate was not processed"
        time.sleep(0.2)
    time.sleep(1.0)  # a second body, if any, would be queued and published by now
    with Session(engine) as session:
        parts = session.exec(select(func.count()).select_from(ChordPart)
                             .where(ChordPart.group_id == group_id)).one()
        bodies = session.exec(select(func.count()).select_from(Outbox)
                              .where(Outbox.dedup_key == f"chord:{group_id}")).one()
        after = session.exec(select(func.count()).select_from(Comparison).where(
            Comparison.request_id.in_(select(Request.id).where(Request.job_id == job_id))
        )).one()
    engine.dispose()
    assert parts == 3
    assert bodies == 1
    assert after == comparisons
