"""One generator process serving several registry entries' queues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, create_engine, select

from db.models import Candidate, Request
from tests.integration.conftest import GENERATORS, Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration


def test_one_process_consumes_every_queue_it_is_given(stack: Stack, tmp_path: Path) -> None:
    stack.stop(*(f"gen-{model}" for model in GENERATORS))
    try:
        stack.start("gen-multi", "worker", "generate", *(a for m in GENERATORS
                                                          for a in ("--model", m)),
                    ready=" ready.")
        workers = json.loads(stack.manage("workers", "list", "--json").stdout)
        # Node names no longer list queues (generate-PID@host): ask what it was started for.
        multi = [w for w in workers if w["started_for"] == [f"gen.{m}" for m in GENERATORS]]
        assert len(multi) == 1 and multi[0]["worker"].startswith("generate-")
        assert sorted(multi[0]["queues"]) == [f"gen.{m}" for m in GENERATORS]
        assert len(multi[0]["models"]) == 3  # three different weight files here
        prompts = write_prompts(tmp_path / "in.jsonl", 6)
        job_id = stack.manage("jobs", "submit", str(prompts)).stdout.strip()
        job = wait_for(stack.settings.database_url, job_id)
        assert (job.status, job.completed) == ("completed", 6)
        engine = create_engine(stack.settings.database_url)
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(Candidate).where(
                Candidate.request_id.in_(
                    select(Request.id).where(Request.job_id == job_id)))).one() == 18
        engine.dispose()
    finally:
        if "gen-multi" in stack.processes:
            stack.stop("gen-multi")
        for model in GENERATORS:
            stack.launch(f"gen-{model}", "worker", "generate", "--model", model,
                         ready=" ready.")
        stack.wait_ready()
