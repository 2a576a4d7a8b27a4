"""``fuser train`` end to end on real workers (tiny models): a job runs, the fuser is
trained from its stored rows (references for three requests, an auditor's label for the
fourth), the new revision is registered as the default fuser, and the next job's fusion
rows name it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, create_engine, select

from db.models import Fusion, Job, Request
from orchestration.registry import BUILTIN_REGISTRY, DATABASE_REFRESH_SECONDS
from orchestration.settings import Settings
from tests.integration.conftest import Stack, running_stack
from tests.integration.test_pipeline import wait_for, write_prompts
from workers.devices import weights_revision

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuser_stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: it changes the registry's default fuser."""
    logs = tmp_path_factory.mktemp("fuser-logs")
    with running_stack(settings, "fusertrain", logs, start=False) as stack:
        # The built-in models stored in the database, so that a new fuser joins them
        # (registered alone, it would be the whole registry).
        registry = logs / "registry.toml"
        registry.write_text(BUILTIN_REGISTRY)
        stack.manage("models", "import", str(registry))
        stack.start_all()
        yield stack


def _fusions(url: str, job_id: str) -> list[Fusion]:
    engine = create_engine(url)
    try:
        with Session(engine) as s:
            return list(s.exec(select(Fusion).join(Request, col(Request.id) == Fusion.request_id)
                               .where(Request.job_id == job_id)).all())
    finally:
        engine.dispose()


def test_the_trained_fuser_is_registered_and_fuses_the_next_job(
        fuser_stack: Stack, tmp_path: Path) -> None:
    stack, url = fuser_stack, fuser_stack.settings.database_url
    prompts = write_prompts(tmp_path / "in.jsonl", 4)
    first = stack.manage("jobs", "submit", str(prompts)).stdout.strip()
    assert wait_for(url, first).status == "completed"
    before = {(f.fuser, f.fuser_revision) for f in _fusions(url, first)}
    assert len(before) == 1 and next(iter(before))[0] == "tiny-fuser"

    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"custom_id": f"req-{i:03d}",
                                        "reference": "The capital of France is Paris."})
                            + "\n" for i in range(3)))
    stack.manage("audit", "label", "--job", first, "--custom-id", "req-003", "--ranking",
                 "tiny-c,tiny-a,tiny-b", "--author", "ana")
    output = tmp_path / "fuser-v2"
    trained = stack.manage("fuser", "train", first, "--references", str(refs),
                           "--fuser", "tiny-fuser", "-o", str(output), "--device", "cpu",
                           "--epochs", "2", "--lr", "1e-2", "--register", "tiny-fuser-v2",
                           "--default", timeout=300)
    registered_at = time.monotonic()
    assert "4 examples (3 with a reference, 1 with a labelled best" in trained.stdout
    assert "registered fuser tiny-fuser-v2" in trained.stdout
    found = re.search(r"new revision (\w+)", trained.stdout)
    assert found is not None
    revision = found.group(1)
    assert revision == weights_revision(output)
    assert revision != next(iter(before))[1]
    listed = {e["name"]: e for e in json.loads(stack.manage("models", "list", "--json").stdout)}
    entry = listed["tiny-fuser-v2"]
    assert (entry["backend"], entry["revision"], entry["default"]) == ("genfuser", revision,
                                                                       True)
    assert entry["path"] == str(output.resolve())
    assert entry["params"] == listed["tiny-fuser"]["params"]
    assert not listed["tiny-fuser"]["default"]

    # A running worker re-reads the registry within DATABASE_REFRESH_SECONDS.
    time.sleep(max(0.0, DATABASE_REFRESH_SECONDS + 0.5 - (time.monotonic() - registered_at)))
    second = stack.manage("jobs", "submit", str(prompts)).stdout.strip()
    job = wait_for(url, second)
    assert job.status == "completed" and job.completed == 4, job.errors
    engine = create_engine(url)
    with Session(engine) as s:
        stored = s.get(Job, second)
        assert stored is not None and stored.fuser == "tiny-fuser-v2"
    engine.dispose()
    rows = _fusions(url, second)
    assert len(rows) == 4
    assert {(f.fuser, f.fuser_revision) for f in rows} == {("tiny-fuser-v2", revision)}

    # Training again under a registered name is refused before it trains.
    again = stack.manage("fuser", "train", first, "--references", str(refs), "-o",
                         str(tmp_path / "fuser-v3"), "--register", "tiny-fuser-v2",
                         check=False, timeout=300)
    assert again.returncode == 1 and "already registered (--replace" in again.stderr
    assert not (tmp_path / "fuser-v3").exists()
