"""Queues as admins see them: depth, consumers, pause and resume, purge.

Pausing a generator does two things: ``registered_model.paused`` is stored (so a worker
that starts later stays paused, see ``ops/cli_processes.py``) and a ``cancel_consumer``
is broadcast, so running workers stop taking messages from ``gen.<model>``; a task already
running finishes. Resuming clears the flag and sends ``add_consumer`` only to the workers
named after their queues, ``gen.<model>[+gen.<other>…]@…``: a broadcast
would make every other worker start consuming that queue too.

Purging reads every message off the queue on one channel without acknowledging it,
collects the chunk ids in their ``kwargs``, abandons those chunks in Postgres (their
pending requests fail with ``purged by admin``, so the job still finishes and nothing is
silently lost), commits, and only then acknowledges the messages. A crash in between
leaves the messages on the queue, where they find their chunk done and do nothing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from celery import Celery
from kombu import Connection
from sqlmodel import Session, select

from db.models import RegisteredModel, utcnow
from orchestration import lifecycle
from orchestration.celery_app import FUSE_QUEUE, RANK_QUEUE, gen_queue
from orchestration.registry import Registry

PURGE_REASON = "purged by admin"
DEFAULT_QUEUE = "blendq.default"


def sync_registry(session: Session, registry: Registry) -> None:
    """Copy registry entries into ``registered_model``, keeping each stored pause flag."""
    for entry in registry.entries.values():
        row = session.get(RegisteredModel, entry.name)
        if row is None:
            row = RegisteredModel(name=entry.name, role=entry.role, backend=entry.backend,
                                  path=entry.path, revision=entry.revision, queue=entry.queue,
                                  params=entry.params, is_default=entry.default,
                                  updated_at=utcnow())
        else:
            row.role, row.backend, row.path = entry.role, entry.backend, entry.path
            row.revision, row.queue, row.params = entry.revision, entry.queue, entry.params
            row.is_default = entry.default
            row.updated_at = utcnow()
        session.add(row)
    session.flush()


def set_paused(session: Session, registry: Registry, model: str, paused: bool) -> str:
    """Store the flag; returns the model's queue. Only generators have a queue of their own."""
    registry.get(model, "generator")
    sync_registry(session, registry)
    row = session.get(RegisteredModel, model)
    assert row is not None
    row.paused = paused
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row.queue


def is_paused(session: Session, model: str) -> bool:
    return bool(session.exec(select(RegisteredModel.paused)
                             .where(RegisteredModel.name == model)).one_or_none())


def paused_models(session: Session) -> set[str]:
    return set(session.exec(select(RegisteredModel.name)
                            .where(RegisteredModel.paused == True)).all())  # noqa: E712


def blendq_queues(session: Session, registry: Registry) -> list[str]:
    """Every queue blendq declares: one per generator (registry or table), rank, fuse."""
    generators = {e.name for e in registry.by_role("generator")}
    generators |= set(session.exec(select(RegisteredModel.name)
                                   .where(RegisteredModel.role == "generator")).all())
    return [*(gen_queue(m) for m in sorted(generators)), RANK_QUEUE, FUSE_QUEUE, DEFAULT_QUEUE]


@dataclass(frozen=True)
class QueueState:
    name: str
    exists: bool
    messages: int
    consumers: int


def queue_states(broker_url: str, names: list[str]) -> list[QueueState]:
    """Depth and consumers from a passive declare, which creates nothing."""
    found = []
    with Connection(broker_url) as conn:
        for name in names:
            # A passive declare of a missing queue closes the channel: one channel each.
            channel = conn.channel()
            try:
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                found.append(QueueState(name, True, messages, consumers))
            except Exception:
                found.append(QueueState(name, False, 0, 0))
            finally:
                # Already closed when the broker refused the declare.
                with contextlib.suppress(Exception):
                    channel.close()
    return found


def model_workers(app: Celery, model: str, timeout: float = 1.0) -> list[str]:
    replies = app.control.ping(timeout=timeout) or []
    # Generator workers are named after their queues: gen.a+gen.b@host.
    queue = gen_queue(model)
    return sorted(name for reply in replies for name in reply
                  if queue in name.split("@", 1)[0].split("+"))


def pause_consumers(app: Celery, queue: str, timeout: float = 2.0) -> list[str]:
    """Every worker stops consuming ``queue``; returns the workers that confirmed."""
    replies = app.control.cancel_consumer(queue, reply=True, timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def resume_consumers(app: Celery, model: str, timeout: float = 2.0) -> list[str]:
    workers = model_workers(app, model)
    if not workers:
        return []
    replies = app.control.add_consumer(gen_queue(model), destination=workers, reply=True,
                                       timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


class Drained:
    """Messages taken off a queue and not yet acknowledged, on their own connection."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.connection = Connection(broker_url)
        self.channel = self.connection.channel()
        self.count = 0
        self.chunks: set[int] = set()
        self._last_tag: int | None = None
        while True:
            message = self.channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                break
            self.count += 1
            self._last_tag = message.delivery_tag
            chunk_id = chunk_of(message.body)
            if chunk_id is not None:
                self.chunks.add(chunk_id)

    def ack(self) -> None:
        """Acknowledge everything taken: the messages are gone for good."""
        if self._last_tag is not None:
            self.channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
        self.connection.release()

    def give_back(self) -> None:
        """Close without acknowledging: the broker puts every message back."""
        self.connection.release()


def abandon_chunks(session: Session, chunk_ids: set[int]) -> None:
    for chunk_id in sorted(chunk_ids):
        lifecycle.abandon_chunk(session, chunk_id, PURGE_REASON)


def chunk_of(raw: bytes | str) -> int | None:
    """The chunk id in a Celery protocol 2 message body: [args, kwargs, embed]."""
    try:
        body = json.loads(raw)
        kwargs = body[1] if isinstance(body, list) else body.get("kwargs", {})
        value = kwargs.get("chunk_id")
        return int(value) if value is not None else None
    except Exception:
        return None  # not a blendq task message: counted, purged, nothing to mark
