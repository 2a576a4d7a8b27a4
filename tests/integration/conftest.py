"""A running blendq: real RabbitMQ (a vhost of its own), real PostgreSQL, and the
dispatcher and worker processes started with the same commands admins use
(``ops/bench/stack.py``, which the benchmarks share)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from kombu import Connection

from ops.bench import stack as local
from ops.bench.stack import GENERATORS, REPO, START_TIMEOUT, Stack
from orchestration.settings import Settings
from tests.conftest import fresh_database, manage_runner

__all__ = ["GENERATORS", "REPO", "START_TIMEOUT", "Stack", "private_vhost", "queue_exists",
           "running_stack"]


@contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own, so no other worker on the machine takes its tasks."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: RabbitMQ must be installed (ops/scripts/services.sh)")
    with local.private_vhost() as url:
        yield url


@contextmanager
def running_stack(settings: Settings, name: str, logs: Path, *,
                  database_url: str | None = None, broker_url: str | None = None,
                  env: dict[str, str] | None = None, start: bool = True) -> Iterator[Stack]:
    """Dispatcher and workers on their own database and vhost. The database matters too:
    a dispatcher relays whatever it finds in the outbox, so two stacks (or a stack and the
    in-process tests) sharing one would run each other's jobs.

    ``database_url`` (already migrated) and ``broker_url`` point the stack at servers the
    caller owns (the restart fault tests); ``env`` adds settings for every process.
    Its ``manage`` commands are forked from the run's manage server (``manage_runner``)."""
    with ExitStack() as owned:
        if database_url is None:
            database_url = owned.enter_context(fresh_database(f"_{name}"))
        if broker_url is None:
            broker_url = owned.enter_context(private_vhost())
        try:
            with local.running_stack(settings, name, logs, database_url=database_url,
                                     broker_url=broker_url, env=env, start=start) as running:
                running.runner = manage_runner
                yield running
        finally:
            print(f"worker logs in {logs}")


def queue_exists(broker_url: str, name: str) -> bool:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(queue=name, passive=True)
        except Exception:
            return False
        return True
