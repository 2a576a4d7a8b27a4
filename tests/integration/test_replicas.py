"""Several replicas of every worker kind on one host: two ranking, two tiny-a and two
fusion workers, each with a name of its own, run one job to exact rows, and no request is
generated twice although both generator replicas gather chunks from one queue."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.bench.stack import stored_counts, wait_for_job, write_prompts
from orchestration.settings import Settings
from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration
READY = " ready."
KINDS = {"gen": ("generate", "--model", "tiny-a"), "rank": ("rank",), "fuse": ("fuse",)}


@pytest.fixture(scope="module")
def replicas(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    with running_stack(settings, "replicas", logs, start=False,
                       env={"BLENDQ_GEN_GATHER_CHUNKS": "2"}) as stack:
        stack.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        for kind, args in KINDS.items():
            for replica in ("1", "2"):
                stack.launch(f"{kind}-{replica}", "worker", *args, ready=READY)
        stack.wait_ready()
        yield stack


def test_six_replicas_run_one_job_to_exact_rows(replicas: Stack, tmp_path: Path) -> None:
    listed = json.loads(replicas.manage("workers", "list", "--json").stdout)
    assert len(listed) == 6
    assert len({w["worker"] for w in listed}) == 6
    assert {w["pid"] for w in listed} == {replicas.pid(name) for name in replicas.processes
                                          if name != "dispatcher"}
    assert Counter(q for w in listed for q in w["queues"]) == {
        "gen.tiny-a": 2, "rank": 2, "fuse": 2}

    prompts = write_prompts(tmp_path / "in.jsonl", 48)
    job_id = replicas.manage("jobs", "submit", str(prompts), "--models", "tiny-a",
                             "--chunk-size", "2").stdout.strip()
    job = wait_for_job(replicas.settings.database_url, job_id, timeout=240)
    assert (job.status, job.total, job.completed, job.failed) == ("completed", 48, 48, 0)
    assert stored_counts(replicas.settings.database_url, job_id) == {
        "candidate": 48, "comparison": 0, "ranking": 48, "fusion": 48}
    # Each request was generated once, by one replica or the other: the claims keep two
    # replicas off one chunk, gathered or not.
    generated = 0
    for replica in ("1", "2"):
        log = (replicas.logs / f"gen-{replica}.log").read_text(errors="replace")
        generated += sum(int(n) for n in re.findall(r"'generated': (\d+)", log))
    assert generated == 48
