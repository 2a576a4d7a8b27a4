"""Admin commands against running workers: pause a model mid-job (two replicas consume its
queue), restart a replica paused, purge its queue, retry the failed requests, resume every
replica, and the job completes with no row stored twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, create_engine, select

from db.models import Candidate, Comparison, Fusion, Job, Ranking, Request
from orchestration.queue_admin import queue_states
from tests.integration.conftest import REPO, Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration


def poll(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def queue_row(stack: Stack, name: str) -> dict[str, object]:
    """What ``queues list --json`` says about one queue."""
    rows = json.loads(stack.manage("queues", "list", "--json").stdout)
    return next(r for r in rows if r["queue"] == name)


def depth(stack: Stack, name: str) -> tuple[int, int]:
    """(messages, consumers) read in-process, for polling without a subprocess each time."""
    [state] = queue_states(stack.settings.broker_url, [name])
    return state.messages, state.consumers


def restart(stack: Stack, name: str, *args: str) -> None:
    """Stop and start a stack process, waiting for the new one to be ready."""
    stack.stop(name)
    stack.start(name, *args, ready=" ready.")


def candidates(session: Session, job_id: str, model: str) -> dict[int, int]:
    """request id -> candidate id of ``model``'s usable candidates in the job."""
    ids = select(Request.id).where(Request.job_id == job_id)
    return dict(session.exec(select(Candidate.request_id, Candidate.id).where(
        col(Candidate.request_id).in_(ids), Candidate.model == model,
        col(Candidate.ok).is_(True))).all())


def replicas_of(stack: Stack, queue: str) -> list[dict[str, Any]]:
    """``workers list --json`` rows of the workers started for ``queue``."""
    rows = json.loads(stack.manage("workers", "list", "--json").stdout)
    return [w for w in rows if queue in w["started_for"]]


def test_pause_restart_purge_retry_resume(stack: Stack, tmp_path: Path) -> None:
    url = stack.settings.database_url
    engine = create_engine(url)
    # A second replica of tiny-a: pause, resume and purge act on both.
    stack.start("gen-tiny-a-2", "worker", "generate", "--model", "tiny-a", "--name",
                "second-a", "--device", "cpu", ready=" ready.")
    try:
        _pause_restart_purge_retry_resume(stack, tmp_path, url, engine)
    finally:
        stack.stop("gen-tiny-a-2")
        engine.dispose()


def _pause_restart_purge_retry_resume(stack: Stack, tmp_path: Path, url: str,
                                      engine: Any) -> None:
    poll(lambda: depth(stack, "gen.tiny-a")[1] == 2, 10, "two consumers")
    paused = json.loads(stack.manage("queues", "pause", "gen.tiny-a", "--json").stdout)
    assert paused["queue"] == "gen.tiny-a" and len(paused["workers"]) == 2
    assert paused["acknowledged"] == paused["workers"] and paused["consumers"] == 0
    assert any(w.startswith("second-a@") for w in paused["workers"])
    try:
        poll(lambda: depth(stack, "gen.tiny-a")[1] == 0, 10, "consumer gone")
        row = queue_row(stack, "gen.tiny-a")
        assert (row["paused"], row["consumers"]) == (True, 0)
        assert queue_row(stack, "gen.tiny-b")["paused"] is False
        prompts = write_prompts(tmp_path / "in.jsonl", 4)
        job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "2").stdout.strip()

        def others_done() -> bool:
            with Session(engine) as s:
                return (len(candidates(s, job_id, "tiny-b")) == 4
                        and len(candidates(s, job_id, "tiny-c")) == 4)

        poll(others_done, 60, "tiny-b and tiny-c to generate")
        assert depth(stack, "gen.tiny-a") == (2, 0)  # one message per chunk, untaken

        # A restarted worker reads the stored pause and consumes nothing.
        restart(stack, "gen-tiny-a", "worker", "generate", "--model", "tiny-a")
        assert depth(stack, "gen.tiny-a") == (2, 0)
        listed = json.loads(stack.manage("workers", "list", "--json").stdout)
        assert len(listed) == 6  # three generators, the second tiny-a, rank, fuse
        a_replicas = [w for w in listed if w["started_for"] == ["gen.tiny-a"]]
        assert len(a_replicas) == 2
        restarted = stack.pid("gen-tiny-a")
        assert {w["pid"] for w in a_replicas} == {restarted, stack.pid("gen-tiny-a-2")}
        for w in a_replicas:
            assert (w["queues"], w["paused"]) == ([], ["gen.tiny-a"])
            assert w["host"] == w["worker"].split("@", 1)[1]
        # The pinned replica says its device; the other was left to choose ("auto").
        assert {w["worker"].split("@")[0]: w["device"] for w in a_replicas} == {
            "second-a": "cpu", f"generate-{restarted}": "auto"}
        [b] = [w for w in listed if w["started_for"] == ["gen.tiny-b"]]
        assert b["queues"] == ["gen.tiny-b"] and b["paused"] == []
        assert any(m["path"] == "builtin:tiny-b" for m in b["models"])
        [rank] = [w for w in listed if w["started_for"] == ["rank"]]
        assert rank["queues"] == ["rank"] and rank["worker"].startswith("rank-")
        table = stack.manage("workers", "list").stdout.splitlines()
        assert table[0] == "workers (6)"
        assert table[1].split() == ["worker", "host", "pid", "device", "queues", "paused",
                                    "active", "reserved", "models", "loaded"]
        with Session(engine) as s:
            assert candidates(s, job_id, "tiny-a") == {}
            assert s.get(Job, job_id).status == "in_progress"  # type: ignore[union-attr]

        # Purge: the messages go, their requests fail with the reason, the job finishes.
        refused = stack.manage("queues", "purge", "gen.tiny-a", check=False)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        purged = stack.manage("queues", "purge", "gen.tiny-a", "--yes").stdout
        assert "2 message(s) purged" in purged and "2 chunk(s)" in purged
        job = wait_for(url, job_id, timeout=30)
        assert (job.status, job.completed, job.failed) == ("completed", 0, 4)
        show = json.loads(stack.manage("jobs", "show", job_id, "--json").stdout)
        assert show["errors"]["requests"] == [{"reason": "purged by admin", "count": 4}]
        assert show["candidates"]["ok"] == 8 and show["comparisons"] == 0
        with Session(engine) as s:
            before = {m: candidates(s, job_id, m) for m in ("tiny-b", "tiny-c")}
    finally:
        resumed = stack.manage("queues", "resume", "tiny-a").stdout
    # Both replicas were started paused or paused since: both are found and resumed.
    assert resumed.startswith("gen.tiny-a resumed; 2 of 2 worker(s) started for it "
                              "acknowledged"), resumed
    assert resumed.rstrip().endswith("consumers now 2")
    poll(lambda: depth(stack, "gen.tiny-a")[1] == 2, 10, "consumers back")
    assert depth(stack, "gen.tiny-b")[1] == 1  # no other worker took the queue on

    # Retry: only the failed requests run again, nothing is stored twice.
    retried = stack.manage("jobs", "retry", job_id).stdout
    assert "4 request(s) in 2 chunk(s)" in retried
    job = wait_for(url, job_id, timeout=60)
    assert (job.status, job.completed, job.failed) == ("completed", 4, 0)
    with Session(engine) as s:
        ids = select(Request.id).where(Request.job_id == job_id)
        for model, per_request in before.items():
            assert candidates(s, job_id, model) == per_request  # not regenerated
        assert len(candidates(s, job_id, "tiny-a")) == 4
        for table, expected in ((Candidate, 12), (Comparison, 24), (Ranking, 4), (Fusion, 4)):
            n = s.exec(select(func.count()).select_from(table)
                       .where(col(table.request_id).in_(ids))).one()
            assert n == expected, table.__name__
    assert "retried 4 request(s)" in stack.manage("jobs", "show", job_id).stdout
    assert stack.manage("jobs", "retry", job_id).stdout.strip().endswith(
        "no failed request to retry")
    watched = stack.manage("jobs", "status", job_id, "--watch", check=False)
    assert watched.returncode == 0 and f"{job_id}  completed" in watched.stdout
    listed = json.loads(stack.manage("jobs", "list", "--status", "completed", "--since", "1h",
                                     "--json").stdout)
    assert job_id in [j["id"] for j in listed]


def test_pause_unknown_or_non_generator_is_a_usage_error(stack: Stack) -> None:
    result = stack.manage("queues", "pause", "tiny-ranker", check=False)
    assert result.returncode == 2 and "unknown queue 'tiny-ranker'" in result.stderr
    result = stack.manage("queues", "pause", "fuse", check=False)
    assert result.returncode == 2 and "fuse cannot be paused" in result.stderr
    result = stack.manage("queues", "purge", "not-ours", "--yes", check=False)
    assert result.returncode == 2 and "unknown queue 'not-ours'" in result.stderr


# A worker whose stored pauses read nothing at start and then one queue: as when
# `queues pause` lands after the worker read the flags and before it heard broadcasts.
PAUSED_WHILE_STARTING = """
from ops.cli_processes import _start, node_name
reads = []
def paused():
    reads.append(1)
    return [] if len(reads) == 1 else ["gen.probe-a"]
_start(["gen.probe-a", "gen.probe-b"], [], "solo", node_name("probe", None), paused=paused)
"""


def test_a_pause_stored_while_the_worker_starts_stops_its_queue_once_ready(
        stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-c", PAUSED_WHILE_STARTING], cwd=REPO,
                                   env=stack.env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        poll(lambda: " ready." in log.read_text(errors="replace"), 60, "the probe worker")
        poll(lambda: depth(stack, "gen.probe-b")[1] == 1, 10, "gen.probe-b consumed")
        assert depth(stack, "gen.probe-a")[1] == 0, log.read_text(errors="replace")
        assert "gen.probe-a was paused while the worker started" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
