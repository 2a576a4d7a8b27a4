"""The bad-input corpus: every kind of broken submission gets an error that names the line
and the field, and leaves no requests, chunks or outbox rows behind."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from celery import Celery
from sqlalchemy import func
from sqlmodel import Session, select

from db.models import Chunk, Job, Outbox, Request
from orchestration.registry import load_registry
from orchestration.submission import JobOptions, SubmissionError, submit

GOOD = json.dumps({"custom_id": "ok", "instruction": "Say hi."})


def line(**fields: object) -> str:
    return json.dumps(fields)


def openai(body: object, **extra: object) -> str:
    return json.dumps({"custom_id": "o", "method": "POST", "url": "/v1/chat/completions",
                       "body": body, **extra})


def nested(depth: int) -> bytes:
    return b'{"custom_id": "deep", "instruction": ' + b"[" * depth + b"]" * depth + b"}"


# (name, file lines, expected (line, field) of the first error, words in its message)
CASES: list[tuple[str, Callable[[], list[bytes]], tuple[int, str], str]] = [
    ("broken json", lambda: [GOOD.encode(), b'{"custom_id": "x", '], (2, "(line)"),
     "not valid JSON"),
    ("array not object", lambda: [b'["custom_id", "x"]'], (1, "(line)"), "JSON object"),
    ("missing custom_id", lambda: [line(instruction="x").encode()], (1, "custom_id"),
     "missing"),
    ("custom_id a number", lambda: [line(custom_id=7, instruction="x").encode()],
     (1, "custom_id"), "string"),
    ("custom_id too long", lambda: [line(custom_id="x" * 600, instruction="x").encode()],
     (1, "custom_id"), "limit"),
    ("empty instruction", lambda: [line(custom_id="a", instruction="  ").encode()],
     (1, "instruction"), "empty"),
    ("instruction a list", lambda: [line(custom_id="a", instruction=["x"]).encode()],
     (1, "instruction"), "string"),
    ("input a number", lambda: [line(custom_id="a", instruction="x", input=3).encode()],
     (1, "input"), "string"),
    ("unknown field", lambda: [line(custom_id="a", instruction="x", prompt="y").encode()],
     (1, "prompt"), "unknown field"),
    ("duplicate custom_id", lambda: [GOOD.encode(), GOOD.encode()], (2, "custom_id"),
     "already used on line 1"),
    ("wrong method", lambda: [openai({"messages": []}, method="GET").encode()],
     (1, "method"), "POST"),
    ("wrong url", lambda: [openai({"messages": []}, url="/v1/embeddings").encode()],
     (1, "url"), "/v1/chat/completions"),
    ("body not an object", lambda: [openai("hi").encode()], (1, "body"), "object"),
    ("no messages", lambda: [openai({"messages": []}).encode()], (1, "body.messages"),
     "non-empty"),
    ("no user message", lambda: [openai({"messages": [
        {"role": "system", "content": "x"}]}).encode()], (1, "body.messages"), "user"),
    ("unknown role", lambda: [openai({"messages": [
        {"role": "robot", "content": "x"}]}).encode()], (1, "body.messages[0].role"),
     "one of"),
    ("image content", lambda: [openai({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}).encode()],
     (1, "body.messages[0].content[0]"), "text"),
    ("max_tokens a string", lambda: [openai({"messages": [
        {"role": "user", "content": "x"}], "max_tokens": "9"}).encode()],
     (1, "body.max_tokens"), "integer"),
    ("temperature out of range", lambda: [line(custom_id="a", instruction="x",
                                                params={"temperature": 9}).encode()],
     (1, "params.temperature"), "between"),
    ("invalid utf-8", lambda: [b'{"custom_id": "a", "instruction": "caf\xe9"}'],
     (1, "(line)"), "UTF-8"),
    ("raw NUL byte", lambda: [b'{"custom_id": "a", "instruction": "x\x00y"}'],
     (1, "(line)"), "NUL"),
    ("escaped NUL", lambda: [b'{"custom_id": "a", "instruction": "x\\u0000y"}'],
     (1, "instruction"), "NUL"),
    ("lone surrogate", lambda: [b'{"custom_id": "a", "instruction": "x\\ud800"}'],
     (1, "instruction"), "surrogate"),
    ("deeply nested json", lambda: [nested(100_000)], (1, "(line)"), "nested too deeply"),
    ("huge integer", lambda: [b'{"custom_id": "a", "instruction": "x", "params": '
                              b'{"seed": ' + b"9" * 5000 + b"}}"], (1, "(line)"), "JSON"),
    ("a 10 MB line", lambda: [line(custom_id="big", instruction="x" * 10_000_000).encode()],
     (1, "(line)"), "limit"),
    ("50,001 requests", lambda: [line(custom_id=f"r{i}", instruction="x").encode()
                                 for i in range(50_001)], (50_001, "(file)"), "50000"),
    ("empty file", lambda: [b"", b"   "], (0, "(file)"), "no requests"),
]


def _rows_of(session: Session, job_id: str) -> tuple[int, int, int]:
    def count(model: type) -> int:
        return session.exec(select(func.count()).select_from(model)
                            .where(model.job_id == job_id)).one()
    return count(Request), count(Chunk), count(Outbox)


@pytest.mark.parametrize(("name", "lines", "where", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_file(session: Session, celery_app: Celery, name: str,
                  lines: Callable[[], list[bytes]], where: tuple[int, str],
                  words: str) -> None:
    registry = load_registry(None)
    submitted = submit(session, celery_app, lines(), JobOptions(models=["tiny-a"], top_k=1),
                       registry)
    job = submitted.job
    assert job.status == "failed"
    assert job.errors, name
    first = job.errors[0]
    assert (first["line"], first["field"]) == where, first
    assert words in first["message"], first
    assert _rows_of(session, job.id) == (0, 0, 0)


@pytest.mark.parametrize(("options", "option", "words"), [
    (JobOptions(models=["nope"]), "--models", "unknown model 'nope'"),
    (JobOptions(models=[]), "--models", "at least one"),
    (JobOptions(models=["tiny-a", "tiny-a"]), "--models", "twice"),
    (JobOptions(models=["tiny-a", "tiny-b"], top_k=3), "--top-k", "between 1 and"),
    (JobOptions(models=["tiny-a"], top_k=0), "--top-k", "between 1 and"),
    (JobOptions(models=["tiny-a"], top_k=1, chunk_size=0), "--chunk-size", "at least 1"),
    (JobOptions(models=["tiny-a"], top_k=1, ranker="tiny-a"), "--ranker", "not a ranker"),
    (JobOptions(models=["tiny-a"], top_k=1, fuser="tiny-ranker"), "--fuser", "not a fuser"),
], ids=["unknown model", "zero models", "model twice", "top-k over models", "top-k zero",
        "chunk size zero", "generator as ranker", "ranker as fuser"])
def test_bad_options_store_nothing(session: Session, celery_app: Celery, options: JobOptions,
                                   option: str, words: str) -> None:
    before = session.exec(select(func.count()).select_from(Job)).one()
    with pytest.raises(SubmissionError) as raised:
        submit(session, celery_app, [GOOD.encode()], options, load_registry(None))
    assert str(raised.value).startswith(option), raised.value
    assert words in str(raised.value)
    assert session.exec(select(func.count()).select_from(Job)).one() == before
