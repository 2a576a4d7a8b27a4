"""/metrics, /healthz and /readyz of the long-running processes, and the fleet's gauges.

Workers and the dispatcher serve these on ``BLENDQ_METRICS_PORT`` from a thread of their
own (:func:`serve`); the API serves them on its own port (``ops/api/observability.py``).

The fleet collector (:class:`FleetCollector`) is evaluated on every scrape, from the
database and the broker: outbox backlog and the age of its oldest pending row, the age of
the oldest running chunk, jobs by state, queue depth and consumers (passive declare), and
the stored rows' totals: tokens generated per model and comparisons per ranker revision.
The dispatcher and the API include it; workers do not (one scrape of it per deployment
is enough, and a worker needs no broker connection of its own for it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, make_url

from db.models import JobStatus
from orchestration.settings import Settings

log = structlog.get_logger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PUBLISHED = Counter("blendq_tasks_published", "Stage task messages this process published.",
                    ["stage", "model"])

Check = Callable[[], str | None]  # None when healthy, else what is wrong


# -- readiness checks ------------------------------------------------------------------

_probe_engines: dict[str, Engine] = {}
_probe_lock = threading.Lock()


def _probe_engine(url: str) -> Engine:
    # Its own small engine with a connect timeout: a probe must answer within seconds even
    # when the database host is unreachable, and must not take the workers' connections.
    from sqlmodel import create_engine

    with _probe_lock:
        engine = _probe_engines.get(url)
        if engine is None:
            args: dict[str, Any] = {}
            if make_url(url).get_backend_name() == "postgresql":
                args = {"connect_timeout": 3}
            engine = create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=1,
                                   connect_args=args)
            _probe_engines[url] = engine
        return engine


def check_database(settings: Settings) -> str | None:
    try:
        with _probe_engine(settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def check_broker(settings: Settings) -> str | None:
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    """(all healthy, each check's 'ok' or its error)."""
    results = {}
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as exc:  # a check that breaks is a failed check, not a crash
            problem = f"{type(exc).__name__}: {exc}"
        results[name] = "ok" if problem is None else problem
    return all(v == "ok" for v in results.values()), results


# -- the fleet collector ---------------------------------------------------------------

@dataclass
class _Tally:
    """Totals over an append-only table, read incrementally and exactly.

    Rows with ``id <= watermark`` are summed once into ``frozen``; those above are summed
    on every scrape. The watermark only moves to a ``max(id)`` seen at an earlier scrape
    once every transaction that was open then has ended (``pg_stat_activity``), since a
    transaction still open could commit a lower id later: so a row is never missed, and
    the work per scrape is the rows since the last safe point.
    """

    table: str
    label: str
    values: dict[str, str]  # metric key -> SQL aggregate
    watermark: int = 0
    frozen: dict[tuple[str, str], float] = field(default_factory=dict)
    marks: list[tuple[datetime, int]] = field(default_factory=list)

    def read(self, connection: Connection) -> dict[tuple[str, str], float]:
        open_since = connection.execute(text(
            "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar()
        safe = [m for m in self.marks if open_since is None or m[0] < open_since]
        if safe:
            upto = max(m[1] for m in safe)
            self.marks = [m for m in self.marks if m not in safe]
            if upto > self.watermark:
                for key, value in self._sums(connection, self.watermark, upto).items():
                    self.frozen[key] = self.frozen.get(key, 0) + value
                self.watermark = upto
        totals = dict(self.frozen)
        for key, value in self._sums(connection, self.watermark, None).items():
            totals[key] = totals.get(key, 0) + value
        top, at = connection.execute(text(
            f"SELECT max(id), clock_timestamp() FROM {self.table}")).one()
        if top is not None and top > self.watermark:
            self.marks = [*self.marks[-63:], (at, int(top))]
        return totals

    def _sums(self, connection: Connection, above: int,
              upto: int | None) -> dict[tuple[str, str], float]:
        aggregates = ", ".join(f"{sql} AS {key}" for key, sql in self.values.items())
        bound = "" if upto is None else " AND id <= :upto"
        rows = connection.execute(text(
            f"SELECT {self.label} AS label, {aggregates} FROM {self.table}"
            f" WHERE id > :above{bound} GROUP BY {self.label}"),
            {"above": above, "upto": upto}).mappings()
        return {(key, str(row["label"])): float(row[key] or 0)
                for row in rows for key in self.values}


class FleetCollector(Collector):
    """Gauges and totals read from PostgreSQL and RabbitMQ when Prometheus scrapes."""

    def __init__(self, settings: Settings, queues: Callable[[], Iterable[str]] | None = None):
        self.settings = settings
        self.queues = queues or _configured_queues
        self._lock = threading.Lock()
        self._tokens = _Tally("candidate", "model", {
            "tokens": "sum(completion_tokens)",
            "ok": "count(*) FILTER (WHERE ok)",
            "failed": "count(*) FILTER (WHERE NOT ok)"})
        self._comparisons = _Tally("comparison", "ranker_revision", {"n": "count(*)"})

    def describe(self) -> Iterator[Metric]:
        return iter(())  # evaluated on scrape only, never at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one scrape at a time: the tallies are stateful
            yield from self._database()
            yield from self._broker()

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("blendq_database_up", "1 when the last scrape read the "
                               "database.")
        if make_url(self.settings.database_url).get_backend_name() != "postgresql":
            up.add_metric([], 0)
            yield up
            return
        try:
            with _probe_engine(self.settings.database_url).connect() as connection:
                metrics = list(self._read_database(connection))
        except Exception as exc:
            log.warning("metrics.database_unavailable", error=str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read_database(self, connection: Connection) -> Iterator[Metric]:
        pending, oldest = connection.execute(text(
            "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))"
            " FROM outbox WHERE status = 'pending'")).one()
        yield _gauge("blendq_outbox_pending", "Outbox rows waiting to be published.", pending)
        yield _gauge("blendq_outbox_oldest_pending_age_seconds",
                     "Age of the oldest outbox row waiting to be published (0: none).",
                     oldest or 0)
        running, age = connection.execute(text(
            "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(started_at))"
            " FROM chunk WHERE status = 'running'")).one()
        yield _gauge("blendq_chunks_running", "Chunks a stage is working on.", running)
        yield _gauge("blendq_chunk_oldest_running_age_seconds",
                     "Time since the oldest running chunk started (0: none).", age or 0)
        jobs = GaugeMetricFamily("blendq_jobs", "Jobs by state.", labels=["state"])
        counts: dict[str, int] = {status: n for status, n in connection.execute(text(
            "SELECT status, count(*) FROM job GROUP BY status"))}
        for state in JobStatus:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        tokens = CounterMetricFamily("blendq_generated_tokens", "Completion tokens of stored "
                                     "candidates, per model.", labels=["model"])
        candidates = CounterMetricFamily("blendq_candidates", "Stored candidates per model, "
                                         "by outcome.", labels=["model", "outcome"])
        for (key, model), value in sorted(self._tokens.read(connection).items()):
            if key == "tokens":
                tokens.add_metric([model], value)
            else:
                candidates.add_metric([model, key], value)
        yield tokens
        yield candidates
        comparisons = CounterMetricFamily("blendq_comparisons", "Stored pairwise comparisons, "
                                          "per ranker revision.", labels=["ranker"])
        for (_, ranker), value in sorted(self._comparisons.read(connection).items()):
            comparisons.add_metric([ranker], value)
        yield comparisons

    def _broker(self) -> Iterator[Metric]:
        from kombu import Connection

        up = GaugeMetricFamily("blendq_broker_up", "1 when the last scrape reached RabbitMQ.")
        depth = GaugeMetricFamily("blendq_queue_messages", "Messages ready in a queue.",
                                  labels=["queue"])
        consumers = GaugeMetricFamily("blendq_queue_consumers", "Consumers of a queue.",
                                      labels=["queue"])
        try:
            with Connection(self.settings.broker_url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
                for queue in sorted(set(self.queues())):
                    channel = connection.channel()
                    try:
                        _, messages, count = channel.queue_declare(queue, passive=True)
                    except Exception:
                        continue  # not declared yet: no worker has started for it
                    finally:
                        _close_quietly(channel)
                    depth.add_metric([queue], messages)
                    consumers.add_metric([queue], count)
        except Exception as exc:
            log.warning("metrics.broker_unavailable", error=str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (up, depth, consumers)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # a failed passive declare has closed it already
        channel.close()


def _configured_queues() -> list[str]:
    from orchestration.celery_app import DEAD_QUEUE, app

    return [q.name for q in app.conf.task_queues or ()] + [DEAD_QUEUE]


# -- publishing counter ----------------------------------------------------------------

def _published(sender: str | None = None, body: Any = None, **_: Any) -> None:
    from workers.metrics import labels_of

    kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else None
    labels = labels_of(sender, kwargs if isinstance(kwargs, dict) else None)
    if labels is not None:
        PUBLISHED.labels(*labels).inc()


signals.after_task_publish.connect(_published, weak=False)


# -- exposition ------------------------------------------------------------------------

def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text format of this process's metrics (summed over the server processes in
    multiprocess mode) and of ``extra``."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _Default(Collector):
    """The process-wide registry, wrapped so it can join a registry per scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())


def prepare_multiprocess_dir() -> str:
    """Before ``serve --workers N`` starts its processes: a fresh directory where each
    writes its counters, summed on scrape. Kept when set by the operator (emptied)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="blendq-metrics-")
        os.environ[MULTIPROC_ENV] = path
        import atexit

        atexit.register(shutil.rmtree, path, True)
    return path


# -- the HTTP server of workers and the dispatcher ----------------------------------------

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the log


def wsgi_app(live: Check, ready: dict[str, Check],
             extra: Iterable[Collector] = ()) -> Callable[..., Iterable[bytes]]:
    import json

    extra = list(extra)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body, status, kind = exposition(extra), "200 OK", CONTENT_TYPE
        elif path in ("/healthz", "/readyz"):
            checks = {"process": live} if path == "/healthz" else {"process": live, **ready}
            ok, results = run_checks(checks)
            failed = [name for name, value in results.items() if value != "ok"]
            body = json.dumps({"status": "ok" if ok else "unavailable", "checks": results,
                               "failed": failed}).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            kind = "application/json"
        else:
            body, status, kind = b"not found\n", "404 Not Found", "text/plain"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    return application


def serve(settings: Settings, *, live: Check, ready: dict[str, Check],
          extra: Iterable[Collector] = ()) -> _Server | None:
    """Serve /metrics, /healthz (liveness) and /readyz (readiness) on the metrics port from
    a daemon thread; None when no port is set. A taken port stops the process at start."""
    if settings.metrics_port is None:
        return None
    server = make_server(settings.metrics_host, settings.metrics_port,
                         wsgi_app(live, ready, extra), _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics.serving", host=settings.metrics_host, port=server.server_port)
    return server


# -- what each kind of process serves ------------------------------------------------------

@dataclass
class WorkerState:
    """Set by Celery's signals: whether the worker consumes, and its broker connection."""

    consumer: Any = None
    ready: bool = False
    stopping: bool = False
    since: float = field(default_factory=time.monotonic)

    def live(self) -> str | None:
        if self.stopping:
            return "shutting down"
        from workers.deadline import hung_calls

        hung = hung_calls()
        if hung:
            return (f"model call hung past the task time limit: {', '.join(hung)}; "
                    "restart the worker")
        return None

    def consuming(self) -> str | None:
        if not self.ready:
            return "not consuming yet (loading models or connecting)"
        connection = getattr(self.consumer, "connection", None)
        if connection is not None and not getattr(connection, "connected", True):
            return "broker connection lost; reconnecting"
        return None


def serve_worker(settings: Settings) -> WorkerState:
    """For ``manage.py worker``: task metrics, and probes answered from the worker's own
    state (ready once consuming) and the database."""
    from ops.logging import service_stdout
    from workers import metrics as task_metrics

    service_stdout()
    task_metrics.install()
    state = WorkerState()

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        state.consumer, state.ready = sender, True

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_: Any) -> None:
        state.stopping = True

    serve(settings, live=state.live,
          ready={"worker": state.consuming, "postgresql": lambda: check_database(settings)})
    return state


def serve_dispatcher(settings: Settings) -> None:
    """For ``manage.py dispatcher``: publish counts, the fleet collector, and probes that
    check what the relay needs (PostgreSQL, RabbitMQ)."""
    from ops.logging import service_stdout

    service_stdout()
    serve(settings, live=lambda: None,
          ready={"postgresql": lambda: check_database(settings),
                 "rabbitmq": lambda: check_broker(settings)},
          extra=[FleetCollector(settings)])
