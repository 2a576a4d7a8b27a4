"""kill -9 each kind of blendq process while a job runs: once it is back, the job
completes with every request accounted for and no row stored twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import Candidate, Comparison, Fusion, Ranking, Request
from tests.integration.conftest import Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration
# Six chunks of two: the first one's rows show the process at work, five are still to do.
PROMPTS = 12

# process name, the command that starts it, what shows it is in the middle of its work
PROCESSES = {
    "gen-tiny-a": (("worker", "generate", "--model", "tiny-a"), " ready.", Candidate),
    "rank": (("worker", "rank"), " ready.", Ranking),
    "fuse": (("worker", "fuse"), " ready.", Fusion),
    "dispatcher": (("dispatcher", "--poll", "0.5"), "dispatcher.started", None),
}


def _count(session: Session, model: type, job_id: str) -> int:
    ids = select(Request.id).where(Request.job_id == job_id)
    return session.exec(select(func.count()).select_from(model)
                        .where(model.request_id.in_(ids))).one()


def _started(session: Session, model: type | None, job_id: str) -> bool:
    if model is None:
        # The dispatcher relays a batch in one transaction, so there is no moment with some
        # chunks sent and some not to wait for: kill it as soon as the job is stored, while
        # it is claiming, publishing or committing that batch.
        return True
    return _count(session, model, job_id) > 0


def _stored_by(session: Session, name: str, model: type, job_id: str) -> int:
    """Rows of the job the killed process stores (tiny-a's candidates, not the others')."""
    if model is Candidate:
        ids = select(Request.id).where(Request.job_id == job_id)
        return session.exec(select(func.count()).select_from(Candidate).where(
            col(Candidate.request_id).in_(ids),
            Candidate.model == name.removeprefix("gen-"))).one()
    return _count(session, model, job_id)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_kill_9_mid_job(stack: Stack, tmp_path: Path, name: str) -> None:
    args, ready, progress = PROCESSES[name]
    # Long generations and small chunks, so the job is still running when the kill lands.
    prompts = write_prompts(tmp_path / "in.jsonl", PROMPTS, params={"max_new_tokens": 96})
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "2").stdout.strip()
    engine = create_engine(stack.settings.database_url)
    deadline = time.monotonic() + 120
    with Session(engine) as session:
        while not _started(session, progress, job_id):
            assert time.monotonic() < deadline, f"{name} never started on the job"
            time.sleep(0.05)
            session.expire_all()
    stack.kill(name)
    if progress is not None:
        # The kill landed mid-job: the killed process still had requests of it to store.
        with Session(engine) as session:
            assert _stored_by(session, name, progress, job_id) < PROMPTS, (
                f"{name} had finished the job before the kill: nothing was tested")
    time.sleep(1.0)
    stack.start(name, *args, ready=ready)
    job = wait_for(stack.settings.database_url, job_id, timeout=300)
    assert (job.status, job.total, job.completed, job.failed) == (
        "completed", PROMPTS, PROMPTS, 0)
    with Session(engine) as session:
        assert _count(session, Candidate, job_id) == PROMPTS * 3
        assert _count(session, Comparison, job_id) == PROMPTS * 6
        assert _count(session, Ranking, job_id) == PROMPTS
        assert _count(session, Fusion, job_id) == PROMPTS
        statuses = session.exec(select(Request.status).where(Request.job_id == job_id)).all()
        assert set(statuses) == {"completed"}
    engine.dispose()
