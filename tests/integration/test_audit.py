"""Auditing a completed job: the matrix agrees with the stored comparisons, labels recorded
from the command line come out of the exports, and the auditor role reads only the views."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine, select

from db.models import Comparison, Fusion, Ranking, Request
from tests.conftest import ADMIN_URL
from tests.integration.conftest import Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def audited_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    prompts = write_prompts(tmp_path_factory.mktemp("audit") / "in.jsonl", 4)
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "4").stdout.strip()
    assert wait_for(stack.settings.database_url, job_id).status == "completed"
    return job_id


def test_show_prints_the_stored_matrix(stack: Stack, audited_job: str) -> None:
    detail = json.loads(stack.manage("audit", "show", "--job", audited_job, "--custom-id",
                                     "req-000", "--json").stdout)
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as s:
        request = s.exec(select(Request).where(Request.job_id == audited_job,
                                               Request.custom_id == "req-000")).one()
        stored = {(c.candidate_a_id, c.candidate_b_id): c.logit for c in s.exec(
            select(Comparison).where(Comparison.request_id == request.id)).all()}
        ranking = s.exec(select(Ranking).where(Ranking.request_id == request.id)).one()
        fusion = s.exec(select(Fusion).where(Fusion.request_id == request.id)).one()
    engine.dispose()
    ids = detail["matrix"]["candidate_ids"]
    assert len(ids) == 3 and len(stored) == 6
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            assert detail["matrix"]["logits"][i][j] == (None if a == b else stored[(a, b)])
    assert detail["ranking"]["ranker_revision"] == ranking.ranker_revision
    ranks = {c["candidate_id"]: c["rank"] for c in detail["candidates"]}
    assert ranks == {e["candidate_id"]: e["rank"] for e in ranking.entries}
    assert [i["candidate_id"] for i in detail["fusion"]["inputs"]] == fusion.candidate_ids
    assert detail["fused_output"] == fusion.output == request.fused_output
    assert detail["fusion"]["fuser_revision"] == fusion.fuser_revision
    assert detail["timings"]["fused_at"] and detail["timings"]["completed_at"]

    text = stack.manage("audit", "show", str(request.id)).stdout
    assert "logit(row over column)" in text and "tiny-a" in text and "fuser tiny-fuser" in text
    missing = stack.manage("audit", "show", "999999999", check=False)
    assert missing.returncode == 1 and "no request" in missing.stderr


def test_labels_reach_the_queue_and_both_exports(stack: Stack, audited_job: str,
                                                  tmp_path: Path) -> None:
    first = json.loads(stack.manage("audit", "show", "--job", audited_job, "--custom-id",
                                    "req-001", "--json").stdout)
    by_rank = [c["model"] for c in sorted(first["candidates"], key=lambda c: c["rank"])]
    request_id = str(first["request"]["id"])
    # A person disagrees with the ranker's top choice on req-001 ...
    out = stack.manage("audit", "label", request_id, "--better", by_rank[2], "--worse",
                       by_rank[0], "--author", "ana", "--note", "the last one is right")
    assert "recorded" in out.stdout
    # ... and ranks req-002 in full, by job and custom_id.
    stack.manage("audit", "label", "--job", audited_job, "--custom-id", "req-002",
                 "--ranking", "tiny-c,tiny-a,tiny-b", "--author", "bo")
    no_author = stack.manage("audit", "label", request_id, "--tie", "tiny-a", "tiny-b",
                             check=False)
    assert no_author.returncode == 2 and "--author" in no_author.stderr

    queue = json.loads(stack.manage("audit", "queue", "--job", audited_job, "--json").stdout)
    assert queue[0]["custom_id"] == "req-001" and queue[0]["contradicted_labels"]
    assert len(queue) == 4
    margins = [q["margin"] for q in queue if not q["contradicted_labels"]]
    assert margins == sorted(margins)

    mix = tmp_path / "mix.jsonl"
    assert "4 lines" in stack.manage("audit", "export", "--job", audited_job, "--format",
                                     "mixinstruct", "-o", str(mix)).stdout
    lines = {line["id"]: line for line in map(json.loads, mix.read_text().splitlines())}
    human = {c["model"]: c["scores"]["human"] for c in lines["req-001"]["candidates"]}
    assert human[by_rank[2]] == 1.0 and human[by_rank[0]] == -1.0
    assert [lb["author"] for lb in lines["req-002"]["labels"]] == ["bo"]
    assert "human" not in lines["req-000"]["candidates"][0]["scores"]

    pairs_file = tmp_path / "pairs.jsonl"
    stack.manage("audit", "export", "--job", audited_job, "--format", "pairs", "-o",
                 str(pairs_file))
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert len(pairs) == 12  # 3 unordered pairs per request, labelled or not
    labelled = [p for p in pairs if p["origin"] == "label"]
    assert len(labelled) == 4  # ana's pair and bo's three implied pairs
    ana = next(p for p in labelled if p["author"] == "ana")
    assert (ana["model_a"], ana["model_b"], ana["label"]) == (by_rank[2], by_rank[0], 1.0)
    assert ana["candidate_a"] and ana["source"].startswith("Question 1")


def test_auditor_role_reads_views_only(stack: Stack, audited_job: str) -> None:
    role = f"blendq_test_auditor_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE blendq_auditor")
    url = make_url(stack.settings.database_url).set(drivername="postgresql", username=role)
    try:
        with psycopg.connect(url.render_as_string(hide_password=False),
                             autocommit=True) as conn:
            outcome = conn.execute(
                "SELECT custom_id, status, chosen_model, candidates_ok, comparisons "
                "FROM audit_request_outcome WHERE job_id = %s ORDER BY custom_id",
                (audited_job,)).fetchall()
            assert [(r[0], r[1], r[3], r[4]) for r in outcome] == [
                (f"req-{i:03d}", "completed", 3, 6) for i in range(4)]
            assert all(r[2] for r in outcome)
            rows = conn.execute("SELECT count(*), count(text_a), count(model_b) "
                                "FROM audit_comparison WHERE job_id = %s",
                                (audited_job,)).fetchone()
            assert rows == (24, 24, 24)
            conn.execute("SELECT * FROM audit_label").fetchall()
            for sql in ("SELECT * FROM job", "SELECT text FROM candidate",
                        "INSERT INTO label (request_id, verdict, author, created_at) "
                        "VALUES (1, 'a', 'x', now())",
                        "UPDATE request SET error = 'x'", "CREATE TABLE mine (x int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


SYSTEM = "Answer as a pirate would."


def test_an_openai_line_with_a_system_message_round_trips_to_ranker_eval(
        stack: Stack, tmp_path: Path) -> None:
    """The generators saw a system message and two turns; the export and ranker eval must
    give the ranker that same prompt, the one the ranking stage gave it."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Name another."}]
    line = {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": messages, "max_tokens": 8}}
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps(line) + "\n")
    job_id = stack.manage("jobs", "submit", str(prompts)).stdout.strip()
    assert wait_for(stack.settings.database_url, job_id).status == "completed"

    detail = json.loads(stack.manage("audit", "show", "--job", job_id, "--custom-id",
                                     "chat-1", "--json").stdout)["request"]
    context = f"System: {SYSTEM}\n\nUser: Name a colour.\n\nAssistant: Blue."
    assert (detail["instruction"], detail["input"]) == ("Name another.", context)
    assert f"input: System: {SYSTEM}" in stack.manage(
        "audit", "show", str(detail["id"])).stdout

    mix = tmp_path / "mix.jsonl"
    stack.manage("audit", "export", "--job", job_id, "--format", "mixinstruct", "-o", str(mix))
    [exported] = [json.loads(x) for x in mix.read_text().splitlines()]
    assert (exported["instruction"], exported["input"]) == ("Name another.", context)
    assert exported["messages"] == messages

    # The stored logits are the ranker's reading of the exported source: recompute them.
    pairs_file = tmp_path / "pairs.jsonl"
    stack.manage("audit", "export", "--job", job_id, "--format", "pairs", "-o",
                 str(pairs_file))
    pairs = [json.loads(x) for x in pairs_file.read_text().splitlines()]
    assert len(pairs) == 3 and all(p["source"] == f"Name another.\n{context}" for p in pairs)
    from orchestration.registry import get_registry
    from workers.model_store import get_model

    registry = get_registry(None, stack.settings.database_url)
    ranker = get_model(registry.get("tiny-ranker", "ranker"), stack.settings)
    sources = [p["source"] for p in pairs] + ["Name another."] * len(pairs)
    logits = ranker.compare([(s, p["candidate_a"], p["candidate_b"])
                             for s, p in zip(sources, pairs + pairs, strict=True)])
    for pair, full, last_turn in zip(pairs, logits, logits[len(pairs):], strict=False):
        assert full == pytest.approx(pair["logit_ab"], abs=1e-4)
        assert last_turn != pytest.approx(pair["logit_ab"], abs=1e-4)  # the old export's

    # A person agrees with the ranker on one pair; ranker eval reads the export the same
    # way and so agrees with that label.
    pair = max(pairs, key=lambda p: abs(p["score"]))
    better, worse = ((pair["model_a"], pair["model_b"]) if pair["score"] > 0
                     else (pair["model_b"], pair["model_a"]))
    stack.manage("audit", "label", str(detail["id"]), "--better", better, "--worse", worse,
                 "--author", "ana")
    stack.manage("audit", "export", "--job", job_id, "--format", "pairs", "-o",
                 str(pairs_file))
    result = json.loads(stack.manage("ranker", "eval", str(pairs_file), "--ranker",
                                     "tiny-ranker", "--json").stdout)
    assert result["pairs"] == 1 and result["pairwise_accuracy"] == 1.0, result
