"""The dead-letter queue: messages the workers rejected for good, kept for an admin.

A task that fails after its retries is rejected (see ``celery_app.configure``) and
RabbitMQ moves it to ``blendq.dead`` with an ``x-death`` header naming the queue it left
and why (``rejected``, or ``delivery_limit`` on quorum queues). The task has already
recorded the failure on its requests; requeueing sends the same message, unchanged, back
to its queue to run again (RabbitMQ keeps counting its deaths in ``x-death``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Producer

from orchestration.celery_app import DEAD_QUEUE, EXCHANGE


@dataclass
class DeadMessage:
    task_id: str
    task: str
    queue: str
    reason: str
    deaths: int
    kwargs: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _describe(message: Any) -> DeadMessage:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    try:
        body = json.loads(message.body)
        kwargs = body[1] if isinstance(body, list) and len(body) > 1 else {}
    except (ValueError, TypeError):
        kwargs = {}
    return DeadMessage(
        task_id=str(headers.get("id", "")), task=str(headers.get("task", "")),
        queue=str(deaths[0].get("queue", "")), reason=str(deaths[0].get("reason", "")),
        deaths=sum(int(d.get("count", 1)) for d in deaths), kwargs=kwargs)


def peek(broker_url: str) -> list[DeadMessage]:
    """Every dead message, left where it is (nothing is acknowledged)."""
    with Connection(broker_url) as connection:
        channel = connection.channel()
        found = []
        _, waiting, _ = channel.queue_declare(queue=DEAD_QUEUE, passive=True)
        for _ in range(waiting):
            message = channel.basic_get(queue=DEAD_QUEUE, no_ack=False)
            if message is None:
                break
            found.append(_describe(message))
        # Closing the channel without acks puts every message back, in order.
        channel.close()
    return found


def requeue(broker_url: str, task_ids: set[str] | None = None) -> list[DeadMessage]:
    """Send dead messages (all, or those with these task ids) back to their queues."""
    moved = []
    with Connection(broker_url) as connection:
        channel = connection.channel()
        producer = Producer(channel)
        # Only what is dead now: a requeued task that fails again at once comes back
        # while this runs, and must not be requeued again in a loop.
        _, waiting, _ = channel.queue_declare(queue=DEAD_QUEUE, passive=True)
        for _ in range(waiting):
            message = channel.basic_get(queue=DEAD_QUEUE, no_ack=False)
            if message is None:
                break
            dead = _describe(message)
            if (task_ids is not None and dead.task_id not in task_ids) or not dead.queue:
                continue  # left unacknowledged: back in the queue when the channel closes
            # x-death stays: RabbitMQ adds to its count, so the history of deaths survives.
            headers = dict(message.headers or {})
            # Published before the ack: a crash in between leaves a copy, never a loss.
            producer.publish(message.body, exchange=EXCHANGE, routing_key=dead.queue,
                             headers=headers, content_type=message.content_type,
                             content_encoding=message.content_encoding,
                             delivery_mode=2, declare=[])
            channel.basic_ack(message.delivery_tag)
            moved.append(dead)
        channel.close()
    return moved
