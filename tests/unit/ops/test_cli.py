"""The command line as a user runs it: in a subprocess, from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MODEL_CACHE

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "ops" / "examples" / "prompts.jsonl"


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "BLENDQ_MODEL_CACHE": str(MODEL_CACHE),
                               **(env or {})})


def test_help_lists_every_group() -> None:
    result = manage("--help")
    assert result.returncode == 0
    for group in ("db", "jobs", "models", "worker", "dispatcher", "run"):
        assert f"  {group}" in result.stdout


def test_embedded_run_writes_a_result_per_prompt(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = manage("run", str(EXAMPLE), "-o", str(out), "--db", str(tmp_path / "e.db"))
    assert result.returncode == 0, result.stderr
    prompts = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [p["custom_id"] for p in prompts]
    for line in lines:
        assert line["status"] == "completed"
        assert line["fusion"]["fuser"] == "tiny-fuser"
        assert len(line["candidates"]) == 3
        assert [e["rank"] for e in line["ranking"]["entries"]] == [1, 2, 3]
        assert line["chosen"]["candidate_id"] == line["ranking"]["entries"][0]["candidate_id"]
    assert "completed: 8 completed, 0 failed" in result.stdout


def test_embedded_run_without_fuser_keeps_the_top_candidate(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = manage("run", str(EXAMPLE), "-o", str(out), "--db", str(tmp_path / "e.db"),
                    "--models", "tiny-a,tiny-b", "--fuser", "none")
    assert result.returncode == 0, result.stderr
    for line in map(json.loads, out.read_text().splitlines()):
        assert line["fused_output"] == line["chosen"]["text"]
        assert line["fusion"]["fuser"] == "top-1"
        assert len(line["candidates"]) == 2


def test_embedded_run_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "x", "instruction": 3}\n')
    result = manage("run", str(bad), "-o", str(tmp_path / "o.jsonl"), "--db",
                    str(tmp_path / "e.db"))
    assert result.returncode == 1
    assert "line 1: instruction: must be a string, got a number" in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    result = manage("run", str(EXAMPLE), "--models", "tiny-a,nope", "--db",
                    str(tmp_path / "e.db"))
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr


def test_models_list_shows_the_registry() -> None:
    result = manage("models", "list", "--json")
    assert result.returncode == 0
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert entries["tiny-a"]["queue"] == "gen.tiny-a"
    assert entries["tiny-ranker"]["role"] == "ranker"


def test_db_and_orchestration_import_without_torch() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import db.models, db.queries, db.writes, db.engine\n"
        "import orchestration.submission, orchestration.dispatcher, orchestration.lifecycle\n"
        "import orchestration.chord_backend, orchestration.canvas, orchestration.validation\n"
        "import ops.cli\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
