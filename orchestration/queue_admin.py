"""Queues as admins see them: depth, consumers, pause and resume, purge.

A queue is named as ``queues list`` shows it (``gen.tiny-a``, ``rank``, ``blendq.dead``)
or, for a generator's queue, by the model (``tiny-a``); ``resolve_queue`` accepts both in
every command and names the queues when it knows neither.

Pausing a generator's queue does two things: ``registered_model.paused`` is stored (so a
worker that starts later stays paused, see ``ops/cli_processes.py``) and a
``cancel_consumer`` is broadcast, so every replica consuming ``gen.<model>`` stops taking
messages from it; a task already running finishes. The acknowledgements counted are those
of the workers that consumed the queue (asked with ``inspect active_queues`` first), not
of every worker that heard the broadcast. Resuming clears the flag and sends
``add_consumer`` to every worker started for the queue, consuming it or not: each worker
answers which queues it was started with (``blendq_queues``, ``workers/inspect_commands``),
so a replica that started paused is found too. Node names say nothing about queues
(``KIND-PID@host``), and a broadcast would make every other worker consume the queue.

Purging reads every message off the queue on one channel without acknowledging it,
collects the chunk ids in their ``kwargs``, abandons those chunks in Postgres (their
pending requests fail with ``purged by admin``, so the job still finishes and nothing is
silently lost), commits, and only then acknowledges the messages. A crash in between
leaves the messages on the queue, where they find their chunk done and do nothing.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Connection
from sqlmodel import Session, select

from db.models import RegisteredModel, utcnow
from orchestration import lifecycle
from orchestration.celery_app import DEAD_QUEUE, FUSE_QUEUE, RANK_QUEUE, gen_queue
from orchestration.registry import Registry

PURGE_REASON = "purged by admin"
DEFAULT_QUEUE = "blendq.default"
# Remote inspect commands every blendq worker answers (workers/inspect_commands.py); named
# here by string because orchestration never imports workers.
MODELS_COMMAND = "blendq_models"
QUEUES_COMMAND = "blendq_queues"


class QueueError(ValueError):
    """An admin named a queue blendq does not have, or asked what its queue cannot do."""


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
    sync_registry(session, registry)
    row = session.get(RegisteredModel, model)
    if row is None or row.role != "generator":
        raise QueueError(f"{model!r} is not a generator: only a generator's queue "
                         "(gen.MODEL) can be paused")
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


def generators(session: Session, registry: Registry) -> set[str]:
    """Generators of the registry, and those a past registry stored (their queues remain)."""
    names = {e.name for e in registry.by_role("generator")}
    return names | set(session.exec(select(RegisteredModel.name)
                                    .where(RegisteredModel.role == "generator")).all())


def blendq_queues(session: Session, registry: Registry) -> list[str]:
    """Every queue blendq declares: one per generator, rank, fuse, default, dead letters."""
    return [*(gen_queue(m) for m in sorted(generators(session, registry))), RANK_QUEUE,
            FUSE_QUEUE, DEFAULT_QUEUE, DEAD_QUEUE]


def resolve_queue(name: str, queues: list[str]) -> str:
    """``name`` as a queue of ``queues``: its own name, or a generator's model name."""
    if name in queues:
        return name
    if gen_queue(name) in queues:
        return gen_queue(name)
    raise QueueError(f"unknown queue {name!r}: blendq's queues are {', '.join(queues)} "
                     "(a generator's queue may be named by its model too: tiny-a for "
                     "gen.tiny-a)")


def model_of(queue: str) -> str:
    """The generator whose queue ``queue`` is; only those queues can be paused."""
    if not queue.startswith(GEN_PREFIX):
        raise QueueError(f"{queue} cannot be paused: only a generator's queue (gen.MODEL) "
                         "can; stop its workers instead")
    return queue[len(GEN_PREFIX):]


@dataclass(frozen=True)
class QueueState:
    name: str
    exists: bool
    messages: int
    consumers: int


GEN_PREFIX = gen_queue("")


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


@dataclass
class Replica:
    """One running worker process, as it answered the remote inspect commands."""

    worker: str  # the Celery node name, KIND-PID@host or --name
    host: str
    pid: int | None
    device: str | None
    queues: list[str]  # consuming now
    started_for: list[str]  # the queues it was started with, paused ones included
    models: list[dict[str, Any]]
    active: list[dict[str, Any]]
    reserved: list[dict[str, Any]]

    @property
    def paused(self) -> list[str]:
        return [q for q in self.started_for if q not in self.queues]

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "host": self.host, "pid": self.pid,
                "device": self.device, "queues": self.queues,
                "started_for": self.started_for, "paused": self.paused,
                "models": self.models, "active": self.active, "reserved": self.reserved}


def consuming(app: Celery, timeout: float) -> dict[str, list[str]]:
    """worker -> the queues it consumes now. Waits the whole timeout: the number of
    workers is not known yet, so every later question can stop when that many answered."""
    answers = app.control.inspect(timeout=timeout).active_queues() or {}
    return {name: sorted(q["name"] for q in queues or []) for name, queues in answers.items()}


def _broadcast(app: Celery, command: str, timeout: float, limit: int | None,
               destination: list[str] | None = None) -> dict[str, Any]:
    """worker -> its answer to a blendq inspect command; workers that do not know the
    command (another version) are left out."""
    found: dict[str, Any] = {}
    for reply in app.control.broadcast(command, reply=True, timeout=timeout, limit=limit,
                                       destination=destination) or []:
        for name, answer in reply.items():
            if isinstance(answer, dict) and "ok" in answer:
                found[name] = answer
    return found


def started_for(app: Celery, timeout: float, limit: int | None = None) -> dict[str, list[str]]:
    return {name: list(answer["ok"])
            for name, answer in _broadcast(app, QUEUES_COMMAND, timeout, limit).items()}


def replicas(app: Celery, timeout: float) -> list[Replica]:
    """Every worker that answers within ``timeout``, with what each consumes and holds."""
    queues_of = consuming(app, timeout)
    if not queues_of:
        return []
    limit = len(queues_of)
    inspect = app.control.inspect(timeout=timeout, limit=limit)
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    models = _broadcast(app, MODELS_COMMAND, timeout, limit)
    started = started_for(app, timeout, limit)
    names = sorted(set(queues_of) | set(active) | set(reserved) | set(models))
    return [Replica(
        worker=name, host=name.split("@", 1)[-1],
        pid=models.get(name, {}).get("pid"), device=models.get(name, {}).get("device"),
        queues=queues_of.get(name, []), started_for=sorted(started.get(name, [])),
        models=list(models.get(name, {}).get("ok", [])),
        active=[_task(t) for t in active.get(name) or []],
        reserved=[_task(t) for t in reserved.get(name) or []]) for name in names]


def _task(task: dict[str, Any]) -> dict[str, Any]:
    kwargs = task.get("kwargs") or {}
    return {"id": task.get("id"), "name": task.get("name"),
            "job_id": kwargs.get("job_id"), "chunk_id": kwargs.get("chunk_id")}


@dataclass(frozen=True)
class ConsumerChange:
    """What a pause or resume reached: the workers it was for, those that acknowledged,
    and the queue's consumer count afterwards (from the broker)."""

    queue: str
    workers: list[str]
    acknowledged: list[str]
    consumers: int

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "workers": self.workers,
                "acknowledged": self.acknowledged, "consumers": self.consumers}


def pause_consumers(app: Celery, broker_url: str, queue: str,
                    timeout: float = 2.0) -> ConsumerChange:
    """Every replica consuming ``queue`` stops; counts the ones that consumed it."""
    before = consuming(app, timeout)
    consumers = sorted(name for name, queues in before.items() if queue in queues)
    # Sent to every worker, not only to those that answered in time: one that consumes the
    # queue and answered late must stop too. Only consumers' answers are counted.
    replies = app.control.cancel_consumer(queue, reply=True, timeout=timeout,
                                          limit=len(before) or None) or []
    answered = {name for reply in replies for name in reply}
    # The worker acknowledges before its consumer is cancelled (call_soon): wait for it.
    left = _settle(broker_url, queue, lambda n: n == 0, timeout)
    return ConsumerChange(queue, consumers, sorted(answered & set(consumers)), left)


def resume_consumers(app: Celery, broker_url: str, queue: str,
                     timeout: float = 2.0) -> ConsumerChange:
    """Every worker started for ``queue`` consumes it again; no other worker starts to."""
    alive = consuming(app, timeout)
    started = started_for(app, timeout, limit=len(alive) or None)
    targets = sorted(name for name, queues in started.items() if queue in queues)
    if not targets:
        return ConsumerChange(queue, [], [], _settle(broker_url, queue, lambda n: True, 0))
    replies = app.control.add_consumer(queue, destination=targets, reply=True,
                                       timeout=timeout, limit=len(targets)) or []
    answered = sorted({name for reply in replies for name in reply} & set(targets))
    now = _settle(broker_url, queue, lambda n: n >= len(answered), timeout)
    return ConsumerChange(queue, targets, answered, now)


def _settle(broker_url: str, queue: str, done: Callable[[int], bool], timeout: float) -> int:
    """The queue's consumer count once ``done`` holds for it, or when ``timeout`` ends."""
    deadline = time.monotonic() + timeout
    while True:
        [state] = queue_states(broker_url, [queue])
        if done(state.consumers) or time.monotonic() >= deadline:
            return state.consumers
        time.sleep(0.1)


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
