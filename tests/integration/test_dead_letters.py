"""A task that fails for good is dead-lettered, listed, and can be requeued."""

from __future__ import annotations

import json
import time

import pytest
from celery import Celery

from orchestration.celery_app import CONSUMER_TIMEOUT_MARGIN
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _dead(stack: Stack) -> list[dict[str, object]]:
    return json.loads(stack.manage("queues", "dead", "list", "--json").stdout)


def _wait_dead(stack: Stack, task_id: str, deaths: int) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for message in _dead(stack):
            if message["task_id"] == task_id and message["deaths"] == deaths:
                return message
        time.sleep(0.5)
    raise AssertionError(f"{task_id} not dead-lettered {deaths} time(s): {_dead(stack)}")


def test_a_poison_message_is_dead_lettered_and_requeued(stack: Stack,
                                                        celery_app: Celery) -> None:
    task_id = "poison-0001"
    with celery_app.connection_for_write(stack.settings.broker_url) as connection:
        # No "model" argument: the task raises TypeError, which no retry can cure.
        # send_task, since apply_async would refuse the bad arguments before sending.
        celery_app.send_task("blendq.generate", kwargs={"job_id": "job_x", "chunk_id": 1},
                             queue="gen.tiny-a", routing_key="gen.tiny-a", task_id=task_id,
                             connection=connection)
    first = _wait_dead(stack, task_id, 1)
    assert first["queue"] == "gen.tiny-a"
    assert first["reason"] == "rejected"
    assert first["task"] == "blendq.generate"
    assert first["kwargs"] == {"job_id": "job_x", "chunk_id": 1}
    shown = json.loads(stack.manage("queues", "dead", "show", task_id).stdout)
    assert shown["task_id"] == task_id
    # Listing leaves the messages where they are.
    assert [m["task_id"] for m in _dead(stack)].count(task_id) == 1

    moved = stack.manage("queues", "dead", "requeue", task_id)
    assert f"{task_id} blendq.generate -> gen.tiny-a" in moved.stdout
    # It ran again on gen.tiny-a, failed again, and came back with two deaths.
    again = _wait_dead(stack, task_id, 2)
    assert again["queue"] == "gen.tiny-a"
    assert "1 message(s) requeued" in stack.manage("queues", "dead", "requeue", "--all").stdout
    _wait_dead(stack, task_id, 3)
    missing = stack.manage("queues", "dead", "show", "no-such-task", check=False)
    assert missing.returncode == 1 and "no dead message" in missing.stderr


def test_queues_are_declared_with_the_dead_letter_exchange(stack: Stack) -> None:
    import subprocess

    vhost = stack.settings.broker_url.rsplit("/", 1)[1]
    listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name",
                              "arguments"], capture_output=True, text=True, timeout=60).stdout
    rows = {line.split("\t")[0]: line for line in listing.splitlines()[1:]}
    timeout = (stack.settings.task_time_limit + CONSUMER_TIMEOUT_MARGIN) * 1000
    for queue in ("gen.tiny-a", "rank", "fuse"):
        assert "x-dead-letter-exchange" in rows[queue] and "blendq.dead" in rows[queue]
        # Above the task time limit, so a long task is never taken from its worker.
        assert f'{{"x-consumer-timeout",{timeout}}}' in rows[queue], rows[queue]
    assert "blendq.dead" in rows


def test_quorum_queues_bound_redeliveries(stack: Stack) -> None:
    import subprocess

    from kombu import Connection

    from orchestration.celery_app import declare_queue

    quorum = stack.settings.model_copy(update={"quorum_queues": True, "max_deliveries": 3})
    with Connection(stack.settings.broker_url) as connection:
        declare_queue("gen.quorum-check", quorum)(connection.default_channel).declare()
    vhost = stack.settings.broker_url.rsplit("/", 1)[1]
    listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type",
                              "arguments"], capture_output=True, text=True, timeout=60).stdout
    row = next(line for line in listing.splitlines() if line.startswith("gen.quorum-check"))
    assert "quorum" in row
    assert "x-delivery-limit" in row and "x-dead-letter-exchange" in row
