"""Audit reads and writes on real rows: the matrix, labels, the review queue, exports."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from db.models import Candidate, Comparison, Job, JobStatus, Label, Ranking, Request
from db.queries_audit import (
    AuditError,
    Verdict,
    contradictions,
    export_lines,
    find_request,
    latest_ranking,
    margin,
    record_label,
    request_detail,
    resolve_candidate,
    review_queue,
)

MODELS = ("m-a", "m-b", "m-c")


def make_request(session: Session, job: Job, custom_id: str,
                 logits: dict[tuple[str, str], float],
                 scores: dict[str, float], failed: tuple[str, ...] = ()) -> Request:
    """A ranked request: a candidate per model, the given logits, a ranking by ``scores``."""
    request = Request(job_id=job.id, line_no=1, custom_id=custom_id, instruction="Say hi",
                      input="politely", status="completed")
    session.add(request)
    session.flush()
    cands = {}
    for model in MODELS:
        ok = model not in failed
        cand = Candidate(request_id=request.id, model=model, ok=ok, text=f"{model} says hi",
                         error=None if ok else "boom")
        session.add(cand)
        session.flush()
        cands[model] = cand
    for (a, b), logit in logits.items():
        session.add(Comparison(request_id=request.id, candidate_a_id=cands[a].id,
                               candidate_b_id=cands[b].id, logit=logit, ranker_revision="r1"))
    order = sorted(scores, key=lambda m: -scores[m])
    session.add(Ranking(request_id=request.id, ranker="rk", ranker_revision="r1",
                        strategy="full", aggregation="max_logits",
                        entries=[{"candidate_id": cands[m].id, "model": m, "score": scores[m],
                                  "rank": i} for i, m in enumerate(order, start=1)]))
    session.flush()
    return request


@pytest.fixture
def job(session: Session) -> Job:
    job = Job(status=JobStatus.COMPLETED, models=list(MODELS), ranker="rk")
    session.add(job)
    session.flush()
    return job


def _ids(session: Session, request: Request) -> dict[str, int]:
    return {m: resolve_candidate(session, request, m).id or 0 for m in MODELS}


def test_matrix_rows_are_a_columns_are_b(session: Session, job: Job) -> None:
    logits = {("m-a", "m-b"): 1.5, ("m-b", "m-a"): -1.0, ("m-a", "m-c"): 0.25,
              ("m-c", "m-a"): 0.5, ("m-b", "m-c"): 2.0, ("m-c", "m-b"): -3.0}
    request = make_request(session, job, "q1", logits, {"m-a": 1.0, "m-b": 0.9, "m-c": -2.0})
    detail = request_detail(session, find_request(session, job_id=job.id, custom_id="q1"))
    m = detail["matrix"]
    assert m["models"] == list(MODELS) and m["ranker_revision"] == "r1"
    for i, a in enumerate(MODELS):
        for j, b in enumerate(MODELS):
            assert m["logits"][i][j] == logits.get((a, b))
    assert [c["rank"] for c in detail["candidates"]] == [1, 2, 3]
    assert detail["ranking"]["margin"] == pytest.approx(0.1)
    assert find_request(session, request_id=request.id).custom_id == "q1"
    with pytest.raises(AuditError):
        find_request(session, job_id=job.id, custom_id="nope")


def test_failed_candidate_is_listed_but_not_in_the_matrix(session: Session, job: Job) -> None:
    request = make_request(session, job, "q1", {("m-a", "m-b"): 1.0},
                           {"m-a": 1.0, "m-b": -1.0}, failed=("m-c",))
    detail = request_detail(session, request)
    assert detail["matrix"]["models"] == ["m-a", "m-b"]
    failed = [c for c in detail["candidates"] if not c["ok"]]
    assert [(c["model"], c["error"], c["rank"]) for c in failed] == [("m-c", "boom", None)]
    with pytest.raises(AuditError, match="failed to generate"):
        resolve_candidate(session, request, "m-c")


def test_labels_pair_tie_and_ranking(session: Session, job: Job) -> None:
    request = make_request(session, job, "q1", {("m-b", "m-a"): 0.7},
                           {"m-a": 1.0, "m-b": 0.0, "m-c": -1.0})
    ids = _ids(session, request)
    pair = record_label(session, request, Verdict("a", (ids["m-b"], ids["m-a"])), "ana", "b")
    assert pair.comparison_id is not None  # linked to the stored (b, a) comparison
    tie = record_label(session, request, Verdict("tie", (ids["m-a"], ids["m-c"])), "bo")
    assert tie.comparison_id is None and tie.verdict == "tie"
    ranking = record_label(session, request,
                           Verdict("ranking", (ids["m-c"], ids["m-a"], ids["m-b"])), "cy")
    assert ranking.ranking == [ids["m-c"], ids["m-a"], ids["m-b"]]
    with pytest.raises(AuditError, match="author"):
        record_label(session, request, Verdict("a", (ids["m-a"], ids["m-b"])), " ")
    with pytest.raises(AuditError, match="twice"):
        record_label(session, request, Verdict("a", (ids["m-a"], ids["m-a"])), "ana")
    # The ranker put a first; ana's pair and cy's ranking say otherwise, bo's tie does not.
    entries = request_detail(session, request)
    assert len(entries["labels"]) == 3
    labels = [pair, tie, ranking]
    stored = latest_ranking(session, request.id or 0)
    assert stored is not None
    assert contradictions(stored.entries, labels) == [pair.id, ranking.id]


def test_review_queue_puts_contradicted_then_closest_first(session: Session,
                                                           job: Job) -> None:
    wide = make_request(session, job, "wide", {}, {"m-a": 5.0, "m-b": 0.0, "m-c": -5.0})
    make_request(session, job, "close", {}, {"m-a": 0.11, "m-b": 0.1, "m-c": -5.0})
    make_request(session, job, "mid", {}, {"m-a": 1.0, "m-b": 0.0, "m-c": -5.0})
    ids = _ids(session, wide)
    record_label(session, wide, Verdict("a", (ids["m-c"], ids["m-a"])), "ana")
    queue = review_queue(session, job.id)
    assert [i["custom_id"] for i in queue] == ["wide", "close", "mid"]
    assert queue[0]["contradicted_labels"] and queue[1]["margin"] == pytest.approx(0.01)
    assert [i["request_id"] for i in review_queue(session, job.id, limit=1)] == [wide.id]


def test_export_mixinstruct_and_pairs_carry_labels(session: Session, job: Job) -> None:
    logits = {("m-a", "m-b"): 2.0, ("m-b", "m-a"): -1.0, ("m-a", "m-c"): 1.0,
              ("m-c", "m-a"): -1.0, ("m-b", "m-c"): 0.5, ("m-c", "m-b"): -0.5}
    request = make_request(session, job, "q1", logits, {"m-a": 2.0, "m-b": 0.5, "m-c": -1.0})
    ids = _ids(session, request)
    record_label(session, request, Verdict("a", (ids["m-c"], ids["m-a"])), "ana", "c is right")
    record_label(session, request, Verdict("tie", (ids["m-a"], ids["m-b"])), "bo")

    [line] = list(export_lines(session, job.id, "mixinstruct"))
    assert (line["id"], line["instruction"], line["input"]) == ("q1", "Say hi", "politely")
    scores = {c["model"]: c["scores"] for c in line["candidates"]}
    assert scores["m-a"]["ranker"] == 2.0 and scores["m-a"]["ranker_rank"] == 1
    assert {m: s["human"] for m, s in scores.items()} == {"m-a": -1.0, "m-b": 0.0, "m-c": 1.0}
    assert [lb["author"] for lb in line["labels"]] == ["ana", "bo"]

    pairs = list(export_lines(session, job.id, "pairs"))
    by_origin = {(p["origin"], p["model_a"], p["model_b"]): p for p in pairs}
    assert len(pairs) == 3  # two labelled pairs, one pair only the ranker saw
    labelled = by_origin[("label", "m-c", "m-a")]
    assert labelled["label"] == 1.0 and labelled["note"] == "c is right"
    assert labelled["candidate_a"] == "m-c says hi" and labelled["source"] == "Say hi\npolitely"
    assert labelled["score"] == pytest.approx(-1.0)  # mean of -1.0 and -(1.0)
    assert by_origin[("label", "m-a", "m-b")]["label"] == 0.5
    ranker_only = by_origin[("ranker", "m-b", "m-c")]
    assert ranker_only["label"] is None and ranker_only["score"] == pytest.approx(0.5)
    with pytest.raises(AuditError):
        list(export_lines(session, job.id, "csv"))


def test_margin_needs_two_entries() -> None:
    assert margin([{"rank": 1, "score": 3.0}]) is None
    assert margin([{"rank": 2, "score": 1.0}, {"rank": 1, "score": 3.0}]) == 2.0


def test_label_table_holds_what_was_recorded(session: Session, job: Job) -> None:
    request = make_request(session, job, "q1", {}, {"m-a": 1.0, "m-b": 0.0, "m-c": -1.0})
    ids = _ids(session, request)
    label = record_label(session, request, Verdict("a", (ids["m-a"], ids["m-b"])), "ana", "x")
    stored = session.get(Label, label.id)
    assert stored is not None
    assert (stored.verdict, stored.candidate_a_id, stored.author, stored.note) == (
        "a", ids["m-a"], "ana", "x")


def test_one_ranking_label_is_one_contradicted_label_with_its_pairs_counted(
        session: Session, job: Job) -> None:
    # The ranker's order is a > b > c; the auditor's is c > b > a: all three pairs against.
    request = make_request(session, job, "r", {}, {"m-a": 2.0, "m-b": 1.0, "m-c": 0.0})
    ids = _ids(session, request)
    label = record_label(session, request,
                         Verdict("ranking", (ids["m-c"], ids["m-b"], ids["m-a"])), "ana")
    [item] = review_queue(session, job.id)
    assert item["contradicted_labels"] == [label.id]
    assert item["contradictions"] == [{"label_id": label.id, "verdict": "ranking",
                                       "pairs_contradicted": 3, "pairs_decided": 3}]


CONVERSATION = [
    {"role": "system", "content": "Answer in French."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Quatre."},
    {"role": "user", "content": "And 3+3?"},
]


def test_exports_and_detail_keep_the_whole_conversation(session: Session, job: Job) -> None:
    # Stored as before the rendering existed: only the last user turn as the instruction.
    request = make_request(session, job, "chat", {("m-a", "m-b"): 1.0},
                           {"m-a": 1.0, "m-b": 0.0, "m-c": -1.0})
    request.instruction, request.input, request.messages = "And 3+3?", "", CONVERSATION
    session.add(request)
    session.flush()
    context = "System: Answer in French.\n\nUser: What is 2+2?\n\nAssistant: Quatre."
    detail = request_detail(session, request)["request"]
    assert (detail["instruction"], detail["input"]) == ("And 3+3?", context)
    assert detail["messages"] == CONVERSATION
    [line] = [x for x in export_lines(session, job.id, "mixinstruct") if x["id"] == "chat"]
    assert (line["instruction"], line["input"], line["messages"]) == (
        "And 3+3?", context, CONVERSATION)
    [pair] = [p for p in export_lines(session, job.id, "pairs") if p["custom_id"] == "chat"]
    assert pair["source"] == "And 3+3?\n" + context


def test_the_export_source_is_what_the_ranking_stage_reads(session: Session, job: Job) -> None:
    # A line validated today stores the rendering, so the ranker read exactly this source;
    # ranker eval / train build their source from the export the same way.
    from orchestration.validation import validate_lines
    from workers.ranking.evaluation import source_of as eval_source
    from workers.stage_io import source_text

    line = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": CONVERSATION}}
    [parsed] = validate_lines([json.dumps(line).encode()]).requests
    request = make_request(session, job, "stored", {}, {"m-a": 1.0, "m-b": 0.0, "m-c": -1.0})
    request.instruction, request.input = parsed.instruction, parsed.input
    request.messages = parsed.messages
    session.add(request)
    session.flush()
    [exported] = [x for x in export_lines(session, job.id, "mixinstruct") if x["id"] == "stored"]
    assert eval_source(exported) == source_text(request)
    assert "Answer in French." in source_text(request)
