"""A generator queue unknown when the app was configured (a model registered while the
dispatcher runs) is declared like every blendq queue, not as Celery's default would."""

from __future__ import annotations

from celery import Celery

from orchestration.celery_app import CONSUMER_TIMEOUT_MARGIN, DEAD_EXCHANGE, EXCHANGE
from orchestration.settings import Settings


def test_an_unknown_generator_queue_gets_blendq_arguments(celery_app: Celery,
                                                          settings: Settings) -> None:
    queue = celery_app.amqp.queues["gen.registered-later"]
    assert (queue.exchange.name, queue.routing_key) == (EXCHANGE.name, "gen.registered-later")
    assert queue.queue_arguments == {
        "x-dead-letter-exchange": DEAD_EXCHANGE.name,
        "x-consumer-timeout": (settings.task_time_limit + CONSUMER_TIMEOUT_MARGIN) * 1000}
    # The router sends a task for it through that queue's exchange and key.
    route = celery_app.amqp.router.route({"queue": "gen.registered-later"}, "blendq.generate")
    assert route["queue"] is queue


def test_other_unknown_queues_keep_celerys_default(celery_app: Celery) -> None:
    queue = celery_app.amqp.queues["not-blendq"]
    assert queue.exchange.name == "not-blendq" and not queue.queue_arguments
