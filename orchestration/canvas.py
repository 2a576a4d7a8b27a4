"""The canvas that carries one chunk through generate → rank, and the later hops.

Tasks are named by string so this module never imports the workers.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chord, group
from celery.canvas import Signature

from orchestration.celery_app import (
    FUSE_QUEUE,
    FUSE_TASK,
    GENERATE_TASK,
    RANK_QUEUE,
    RANK_TASK,
    gen_queue,
)


def chunk_canvas(app: Celery, job_id: str, chunk_id: int, models: list[str]) -> Signature:
    """``chord(group(generate per model), rank)``, ids only in the messages.

    The hop to fuse is not part of the canvas: the rank task writes it to the outbox in
    the transaction that stores the rankings, so it is as durable as the first publish
    (a chain would have the rank worker publish it, and a failed publish lose it).
    """
    ids = {"job_id": job_id, "chunk_id": chunk_id}
    header = group(
        app.signature(GENERATE_TASK, kwargs={**ids, "model": model}, immutable=True,
                      queue=gen_queue(model), routing_key=gen_queue(model))
        for model in models
    )
    return chord(header, rank_signature(app, job_id, chunk_id))


def rank_signature(app: Celery, job_id: str, chunk_id: int) -> Signature:
    return app.signature(RANK_TASK, kwargs={"job_id": job_id, "chunk_id": chunk_id},
                         immutable=True, queue=RANK_QUEUE, routing_key=RANK_QUEUE)


def fuse_signature(app: Celery, job_id: str, chunk_id: int) -> Signature:
    return app.signature(FUSE_TASK, kwargs={"job_id": job_id, "chunk_id": chunk_id},
                         immutable=True, queue=FUSE_QUEUE, routing_key=FUSE_QUEUE)


def to_payload(sig: Signature) -> dict[str, Any]:
    """A JSON-ready form of a canvas, as stored in the outbox."""
    return _plain(sig)


def from_payload(app: Celery, payload: dict[str, Any]) -> Signature:
    return app.signature(payload)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
