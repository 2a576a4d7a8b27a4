"""The Celery app, its settings and the queues blendq uses."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.app.amqp import Queues as AMQPQueues
from kombu import Exchange, Queue

from orchestration.registry import RegistryError, get_registry
from orchestration.settings import Settings, get_settings

GENERATE_TASK = "blendq.generate"
RANK_TASK = "blendq.rank"
FUSE_TASK = "blendq.fuse"
RANK_QUEUE = "rank"
FUSE_QUEUE = "fuse"
EXCHANGE = Exchange("blendq", type="direct", durable=True)
# Messages rejected for good land here, whichever queue they came from; the x-death header
# they carry says which (manage.py queues dead list / show / requeue).
DEAD_EXCHANGE = Exchange("blendq.dead", type="fanout", durable=True)
DEAD_QUEUE = "blendq.dead"

class _Queues(AMQPQueues):
    def new_missing(self, name: str) -> Queue:
        """A generator queue the app did not know at configure time (a model registered
        while this process runs) is declared as every blendq queue is: the blendq
        exchange, dead letters, consumer timeout; Celery's default would make one with an
        exchange of its own and none of the arguments, which the workers' declare clashes
        with."""
        if name.startswith("gen."):
            return declare_queue(name, configured_settings())
        queue: Queue = super().new_missing(name)
        return queue


class _AMQP(AMQP):
    queues_cls = _Queues


app = Celery("blendq", amqp=_AMQP)
_configured: list[Settings] = []


def gen_queue(model: str) -> str:
    return f"gen.{model}"


# How much longer than the task time limit RabbitMQ waits for an ack before it cancels
# the consumer: a task at its hard limit is killed and acked well within this.
CONSUMER_TIMEOUT_MARGIN = 300


def declare_queue(name: str, settings: Settings) -> Queue:
    arguments: dict[str, object] = {
        "x-dead-letter-exchange": DEAD_EXCHANGE.name,
        # Per queue from RabbitMQ 3.11.15/3.12; older servers ignore the argument and
        # apply their global consumer_timeout (README: Queues).
        "x-consumer-timeout": (settings.task_time_limit + CONSUMER_TIMEOUT_MARGIN) * 1000,
    }
    if settings.quorum_queues:
        arguments.update({"x-queue-type": "quorum",
                          "x-delivery-limit": settings.max_deliveries})
    return Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments)


def dead_letter_queue() -> Queue:
    return Queue(DEAD_QUEUE, DEAD_EXCHANGE, routing_key=DEAD_QUEUE, durable=True)


def declare_dead_letters(app: Celery) -> None:
    """Create the dead-letter exchange and queue (workers and the dispatcher call this at
    start, before any queue can dead-letter into them)."""
    with app.connection_for_write() as connection:
        dead_letter_queue()(connection.default_channel).declare()


def configure(settings: Settings | None = None, *, eager: bool = False) -> Celery:
    """Apply ``settings`` to the process's app; entry points call this once at start."""
    settings = settings or get_settings()
    moved = bool(_configured) and _configured[0].broker_url != settings.broker_url
    app.conf.update(celery_conf(settings, eager=eager))
    _configured[:] = [settings]
    if moved:
        _forget_broker_connections()
    return app


def _forget_broker_connections() -> None:
    # The app keeps its connection pool, and its AMQP half a producer pool, from the first
    # publish on: after a move to another broker (a test, a command that reconfigures)
    # publishes would still go to the old one. Both are kombu's process-wide pools for
    # that broker URL, so they are let go, not closed: a move back takes them up again.
    app._pool = None
    app.amqp._producer_pool = None


def celery_conf(settings: Settings, *, eager: bool = False) -> dict[str, Any]:
    """Celery's configuration for ``settings``."""
    queues = [declare_queue(RANK_QUEUE, settings), declare_queue(FUSE_QUEUE, settings)]
    try:
        generators = get_registry(settings.registry_path,
                                  settings.database_url).by_role("generator")
    except RegistryError:
        generators = []  # reported by whichever command reads the registry
    queues.extend(declare_queue(gen_queue(e.name), settings) for e in generators)
    return dict(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        # Stage outputs live in Postgres; the backend only counts chord parts.
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that fails for good is rejected, so its message is dead-lettered for an
        # admin to inspect or requeue; the failure itself is recorded by the task. A time
        # limit is acked: rejecting would requeue it to time out again.
        task_acks_on_failure=False,
        task_acks_on_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_exchange=EXCHANGE.name,
        task_default_exchange_type="direct",
        task_default_queue="blendq.default",
        task_routes={
            RANK_TASK: {"queue": RANK_QUEUE, "routing_key": RANK_QUEUE},
            FUSE_TASK: {"queue": FUSE_QUEUE, "routing_key": FUSE_QUEUE},
        },
        task_queues=queues,
        task_create_missing_queues=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 30, 1),
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        # Sent by the consumer loop, which the threads pool leaves free while a task runs.
        broker_heartbeat=settings.broker_heartbeat,
        worker_hijack_root_logger=False,
        # Flower and `celery events` follow tasks through these (BLENDQ_TASK_EVENTS).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        task_always_eager=eager,
        task_eager_propagates=eager,
        blendq_settings=settings,
    )


def configured_settings() -> Settings:
    """The settings the app was configured with (a worker's tasks read them)."""
    if not _configured:
        configure()
    return _configured[0]


def _environment_defaults() -> dict[str, Any]:
    # Celery's own command line (`celery -A orchestration.celery_app inspect ping`, Flower)
    # imports this module without calling configure(): the app then reads BLENDQ_* when its
    # configuration is first needed. Defaults rank below what configure() sets, and a
    # process that configured itself does not read the environment here at all.
    return {} if _configured else celery_conf(get_settings())


app.add_defaults(_environment_defaults)
