"""chunk_canvas: chord(group(generate per model), rank), ids only, and a payload that
survives the outbox's JSON column unchanged; the fuse hop is a signature of its own that
the rank task writes to the outbox."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature, _chord

from orchestration.canvas import chunk_canvas, from_payload, fuse_signature, to_payload
from orchestration.celery_app import FUSE_TASK, GENERATE_TASK, RANK_TASK

MODELS = ["tiny-a", "tiny-b", "qwen2.5-0.5b"]


def parts(canvas: Signature) -> tuple[list[Signature], list[Signature]]:
    """The chord's header tasks and the tasks its body runs, in order."""
    assert isinstance(canvas, _chord), type(canvas)
    header = list(canvas.tasks)
    body = canvas.body
    assert not isinstance(body, _chord), type(body)
    # A plain signature: no chain, so the rank worker never publishes fuse itself.
    assert type(body) is Signature, type(body)
    return header, [body]


def check_structure(canvas: Signature, job_id: str, chunk_id: int, models: list[str]) -> None:
    header, body = parts(canvas)
    ids = {"job_id": job_id, "chunk_id": chunk_id}
    assert [s.task for s in header] == [GENERATE_TASK] * len(models)
    for sig, model in zip(header, models, strict=True):
        assert dict(sig.kwargs) == {**ids, "model": model}
        assert tuple(sig.args) == ()
        assert sig.options["queue"] == f"gen.{model}"
        assert sig.options["routing_key"] == f"gen.{model}"
        assert sig.immutable
    assert [s.task for s in body] == [RANK_TASK]
    rank = body[0]
    assert (rank.options["queue"], rank.options["routing_key"]) == ("rank", "rank")
    assert dict(rank.kwargs) == ids
    assert tuple(rank.args) == ()
    # Immutable: rank must not receive the header's results.
    assert rank.immutable


def test_fuse_signature_round_trips(celery_app: Celery) -> None:
    payload = to_payload(fuse_signature(celery_app, "job_f", 7))
    fuse = from_payload(celery_app, json.loads(json.dumps(payload)))
    assert fuse.task == FUSE_TASK
    assert dict(fuse.kwargs) == {"job_id": "job_f", "chunk_id": 7}
    assert (fuse.options["queue"], fuse.options["routing_key"]) == ("fuse", "fuse")
    assert fuse.immutable


def test_chunk_canvas_structure(celery_app: Celery) -> None:
    check_structure(chunk_canvas(celery_app, "job_abc", 42, MODELS), "job_abc", 42, MODELS)


def test_single_model_is_still_a_chord(celery_app: Celery) -> None:
    check_structure(chunk_canvas(celery_app, "job_1", 1, ["tiny-a"]), "job_1", 1, ["tiny-a"])


def test_payload_is_plain_json_and_round_trips(celery_app: Celery) -> None:
    canvas = chunk_canvas(celery_app, "job_rt", 9, MODELS)
    payload = to_payload(canvas)
    text = json.dumps(payload)  # raises on anything JSON cannot hold
    stored = json.loads(text)
    assert stored == payload  # no tuples or other types that change on the way through
    rebuilt = from_payload(celery_app, stored)
    check_structure(rebuilt, "job_rt", 9, MODELS)
    assert to_payload(rebuilt) == payload
    assert json.loads(json.dumps(to_payload(rebuilt))) == stored


def test_payload_carries_ids_not_texts(celery_app: Celery) -> None:
    payload = to_payload(chunk_canvas(celery_app, "job_ids", 3, ["tiny-a", "tiny-b"]))

    def leaves(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [x for v in value.values() for x in leaves(v)]
        if isinstance(value, list):
            return [x for v in value for x in leaves(v)]
        return [value]

    kwargs_values = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("task"), str) and value["task"].startswith("blendq."):
                kwargs_values.update(value["kwargs"].items())
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(payload)
    assert kwargs_values == {("job_id", "job_ids"), ("chunk_id", 3), ("model", "tiny-a"),
                             ("model", "tiny-b")}
    assert all(isinstance(x, str | int | bool) or x is None for x in leaves(payload))


@pytest.mark.parametrize("models", [["a"], ["a", "b"], ["m1", "m2", "m3", "m4", "m5"]])
def test_one_generate_per_model_in_order(celery_app: Celery, models: list[str]) -> None:
    rebuilt = from_payload(celery_app, json.loads(json.dumps(
        to_payload(chunk_canvas(celery_app, "j", 5, models)))))
    header, _ = parts(rebuilt)
    assert [s.kwargs["model"] for s in header] == models
    assert [s.options["queue"] for s in header] == [f"gen.{m}" for m in models]


def test_canvases_of_different_chunks_differ_only_in_ids(celery_app: Celery) -> None:
    one = json.dumps(to_payload(chunk_canvas(celery_app, "job_x", 1, MODELS)))
    two = json.dumps(to_payload(chunk_canvas(celery_app, "job_x", 2, MODELS)))
    assert one != two
    assert one.replace('"chunk_id": 1', '"chunk_id": 2') == two
