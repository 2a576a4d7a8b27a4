"""The admin command line as a script drives it, on a database and vhost of its own and no
workers: exit codes a shell can branch on, JSON with the documented keys, human output
without Python reprs or ``None``, tables that are not cut when piped, one name per queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, create_engine

from db.models import utcnow
from orchestration.lifecycle import expire_due_jobs
from tests.conftest import MODEL_CACHE, fresh_database
from tests.integration.conftest import REPO, private_vhost

pytestmark = pytest.mark.integration


@dataclass
class Shell:
    env: dict[str, str]
    database_url: str

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """``script`` in bash, from the repository root, ``manage`` being manage.py."""
        return subprocess.run(["bash", "-c", f'manage() {{ "{sys.executable}" manage.py "$@"; }}\n'
                               + script], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=120)

    def submit(self, path: Path) -> str:
        result = self.manage("jobs", "submit", str(path), "--json")
        return str(json.loads(result.stdout)["id"])


@pytest.fixture(scope="module")
def shell() -> Iterator[Shell]:
    with fresh_database("_cli") as url, private_vhost() as broker:
        env = {**os.environ, "BLENDQ_ENV": "test", "BLENDQ_DATABASE_URL": url,
               "BLENDQ_BROKER_URL": broker, "BLENDQ_MODEL_CACHE": str(MODEL_CACHE)}
        env.pop("BLENDQ_REGISTRY_PATH", None)
        yield Shell(env, url)


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def valid_file(tmp_path: Path, name: str = "in.jsonl") -> Path:
    return write(tmp_path / name, json.dumps({"custom_id": "a", "instruction": "hi"}),
                 json.dumps({"custom_id": "b", "instruction": "bye"}))


def test_watch_exits_3_on_a_failed_job_and_the_error_names_the_column(
        shell: Shell, tmp_path: Path) -> None:
    # A truncated line: 37 characters, so the JSON error is at column 38 of line 2.
    bad = write(tmp_path / "bad.jsonl", json.dumps({"custom_id": "a", "instruction": "q"}),
                '{"custom_id": "b", "instruction": "q"')
    result = shell.run(f'job=$(manage jobs submit {bad} 2>err.txt); echo "submit=$?"\n'
                       f'manage jobs status "$job" --watch --interval 0.1 >out.txt; '
                       f'echo "watch=$?"\n'
                       f'manage jobs status "$job" --watch --json >/dev/null; echo "json=$?"\n'
                       f'cat err.txt; cat out.txt; rm -f err.txt out.txt')
    assert result.returncode == 0, result.stderr
    assert "submit=1" in result.stdout and "watch=3" in result.stdout
    assert "json=3" in result.stdout
    assert "line 2: (line): not valid JSON: Expecting ',' delimiter at column 38" \
        in result.stdout
    assert " failed " in result.stdout and "{" not in result.stdout.split("watch=3")[1]


def test_watch_exit_codes_cancelled_expired_and_timeout(shell: Shell, tmp_path: Path) -> None:
    # No dispatcher and no worker: a job stays in_progress until an admin or expiry ends it.
    running = shell.submit(valid_file(tmp_path, "a.jsonl"))
    timed_out = shell.run(f"manage jobs status {running} --watch --interval 0.2 --timeout 1; "
                          "echo code=$?")
    assert "code=6" in timed_out.stdout and "in_progress" in timed_out.stdout

    cancelled = shell.run(f"manage jobs cancel {running} --json && "
                          f"manage jobs status {running} --watch; echo code=$?")
    assert json.loads(cancelled.stdout.splitlines()[0])["id"] == running
    assert "code=5" in cancelled.stdout, cancelled.stdout + cancelled.stderr

    expiring = shell.submit(valid_file(tmp_path, "b.jsonl"))
    engine = create_engine(shell.database_url)
    with Session(engine) as session:
        # What the dispatcher's expiry sweep does, as if a day had passed.
        assert expire_due_jobs(session, utcnow() + timedelta(days=2)) == [expiring]
        session.commit()
    engine.dispose()
    expired = shell.run(f"manage jobs status {expiring} --watch --json; echo code=$?")
    assert "code=4" in expired.stdout
    assert json.loads(expired.stdout.rsplit("code=", 1)[0])["status"] == "expired"


def test_human_output_has_no_none_or_python_reprs(shell: Shell, tmp_path: Path) -> None:
    job_id = shell.submit(valid_file(tmp_path))
    status = shell.manage("jobs", "status", job_id)
    assert status.returncode == 0
    assert "chunks: pending 1" in status.stdout or "chunks: dispatched 1" in status.stdout
    assert "{" not in status.stdout and "None" not in status.stdout
    show = shell.manage("jobs", "show", job_id)
    assert "not ended yet" in show.stdout and "not started" in show.stdout
    assert "None" not in show.stdout, show.stdout
    listed = shell.manage("jobs", "list")
    assert job_id in listed.stdout and "None" not in listed.stdout


def test_tables_are_not_cut_when_piped(shell: Shell) -> None:
    piped = shell.run("manage models list | cat")
    assert "…" not in piped.stdout
    lines = piped.stdout.splitlines()
    assert lines[0].startswith("models (")
    assert lines[1].split() == ["name", "role", "backend", "path", "revision", "queue",
                                "default", "params"]
    tiny_a = next(line for line in lines if line.startswith("tiny-a "))
    assert "gen.tiny-a" in tiny_a and "builtin:tiny-a" in tiny_a  # one row, one line


def test_queues_accept_both_names_and_list_the_dead_letter_queue(shell: Shell) -> None:
    rows = json.loads(shell.manage("queues", "list", "--json").stdout)
    names = [r["queue"] for r in rows]
    assert {"gen.tiny-a", "rank", "fuse", "blendq.default", "blendq.dead"} <= set(names)
    assert set(rows[0]) == {"queue", "exists", "messages", "consumers", "paused"}

    for name in ("gen.tiny-a", "tiny-a"):
        paused = shell.manage("queues", "pause", name, "--json", "--timeout", "0.5")
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout) == {"queue": "gen.tiny-a", "workers": [],
                                             "acknowledged": [], "consumers": 0,
                                             "paused": True}
    human = shell.manage("queues", "resume", "tiny-a", "--timeout", "0.5")
    assert human.stdout.startswith("gen.tiny-a resumed; no running worker was started for it")

    unknown = shell.manage("queues", "pause", "gen.nope")
    assert unknown.returncode == 2
    assert "unknown queue 'gen.nope': blendq's queues are gen.tiny-a" in unknown.stderr
    assert "registry built-in registry" not in unknown.stderr
    ranked = shell.manage("queues", "pause", "rank")
    assert ranked.returncode == 2 and "only a generator's queue (gen.MODEL)" in ranked.stderr
    for name in ("tiny-b", "gen.tiny-b"):
        purged = shell.manage("queues", "purge", name, "--yes", "--json")
        assert purged.returncode == 0, purged.stderr
        assert json.loads(purged.stdout) == {
            "queue": "gen.tiny-b", "exists": False, "messages": 0, "chunks": [],
            "reason": "purged by admin", "consumers": 0}
    refused = shell.manage("queues", "purge", "nope", "--yes")
    assert refused.returncode == 2 and "unknown queue 'nope'" in refused.stderr
