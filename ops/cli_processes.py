"""``manage.py worker`` and ``manage.py dispatcher``: the long-running processes."""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import click

from ops import context, metrics
from orchestration import dispatcher as relay
from orchestration.celery_app import FUSE_QUEUE, RANK_QUEUE, declare_dead_letters, gen_queue

# One task at a time either way (concurrency 1), so one copy of the weights per process.
POOL_HELP = ("Celery pool. threads runs the task in a thread, so the broker connection "
             "keeps its heartbeat however long a model call takes (README: Long tasks); "
             "solo runs it inside the consumer loop, which then sends no heartbeat.")
WORKER_MODULES = ("workers.generation.tasks", "workers.ranking.tasks", "workers.fusion.tasks",
                  "workers.inspect_commands")


@click.group()
def worker() -> None:
    """Start a stage worker."""


def node_name(kind: str, name: str | None) -> str:
    """The Celery node name: ``NAME@host`` with ``--name``, else ``KIND-PID@host``.

    Unique per process by default: two workers with one name on one host collide on
    their control queue (RESOURCE_LOCKED), so replicas need names of their own. Which
    queues a worker consumes is asked of the worker (``active_queues``), never read from
    its name.
    """
    chosen = name or f"{kind}-{os.getpid()}"
    return chosen if "@" in chosen else f"{chosen}@{socket.gethostname()}"


def _start(queues: list[str], warm: list[tuple[str, str]], pool: str, node: str,
           paused: Callable[[], list[str]] = list) -> None:
    """``paused`` reads which of ``queues`` an admin paused (``queues pause``)."""
    import importlib

    from celery.signals import worker_ready

    from db.engine import skip_pre_ping
    from workers.model_store import get_model

    skip_pre_ping()
    settings = context.settings()
    app = context.app(settings)
    # Up while the models load (live, not ready), so an orchestrator waits, not restarts.
    metrics.serve_worker(settings)
    registry = context.registry(settings)
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
        click.echo(f"torch uses {torch.get_num_threads()} threads", err=True)
    for module in WORKER_MODULES:
        importlib.import_module(module)
    declare_dead_letters(app)
    # Load (and so warm) the model before consuming, so the first task is not slow and
    # a broken path is reported at start-up.
    for model, role in warm:
        try:
            get_model(registry.get(model, role), settings)
        except Exception as exc:
            click.echo(f"warning: {exc}; its tasks will record the error", err=True)
    # A paused queue is selected and excluded at once: the worker starts consuming nothing
    # from it (not even for a moment), and ``queues resume`` adds the consumer by name.
    # Read after the models loaded (minutes for a large one): a pause sent meanwhile
    # reached no worker, only the stored flag.
    excluded_queues = paused()
    excluded = ["--exclude-queues", ",".join(excluded_queues)] if excluded_queues else []
    for queue in excluded_queues:
        click.echo(f"{queue} is paused (queues resume to start it); waiting", err=True)

    @worker_ready.connect(weak=False)
    def _pauses_sent_while_starting(sender: Any, **_: Any) -> None:
        # From here on the worker hears pause broadcasts; one sent between the read above
        # and now is only in the stored flag.
        for queue in set(paused()) - set(excluded_queues):
            click.echo(f"{queue} was paused while the worker started; stopping it", err=True)
            sender.cancel_task_queue(queue)
    try:
        app.worker_main([
            "worker", "--queues", ",".join(queues), *excluded, "--pool", pool,
            "--concurrency", "1", "--prefetch-multiplier", "1",
            "--hostname", node,
            "--without-gossip", "--without-mingle", "--loglevel", settings.log_level,
        ])
    finally:
        # The worker has stopped (its shutdown closed what it opened): the interpreter's
        # last collection would walk every object the imports and the models made, about
        # 1.5 s of CPU with torch and transformers loaded, only to free memory the process
        # gives back as it exits. atexit handlers still run.
        gc.freeze()


def replica_options(command: Callable[..., None]) -> Callable[..., None]:
    """--name and --device, shared by every worker kind."""
    command = click.option(
        "--device", default=None,
        help="Pin the worker to one device: cpu, cuda or cuda:N (cuda:N sets "
             "CUDA_VISIBLE_DEVICES=N). Default: the registry entry's device, else cuda "
             "when visible, else cpu.")(command)
    return click.option(
        "--name", default=None,
        help="Celery node name (NAME or NAME@host); default KIND-PID@host, unique per "
             "process so any number of replicas can run on one host.")(command)


def _pin(device: str | None) -> None:
    if device is None:
        return
    from workers.devices import pin_device

    try:
        pin_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc


@worker.command()
@click.option("--model", "models", required=True, multiple=True,
              help="Generator name from the registry; repeat it to serve several entries "
                   "from one process (entries with the same weights share one copy).")
@click.option("--pool", default="threads", show_default=True, help=POOL_HELP)
@replica_options
def generate(models: tuple[str, ...], pool: str, name: str | None, device: str | None) -> None:
    """Consume gen.MODEL only (one queue per --model)."""
    _pin(device)
    registry = context.registry(context.settings())
    for model in models:
        try:
            registry.get(model, "generator")
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    names = list(dict.fromkeys(models))
    _start([gen_queue(m) for m in names], [(m, "generator") for m in names], pool,
           node_name("generate", name),
           paused=lambda: [gen_queue(m) for m in names if _stored_pause(m)])


def _stored_pause(model: str) -> bool:
    """Whether an admin paused MODEL (``queues pause``); a restart must not undo it."""
    from db.engine import session_scope
    from orchestration.queue_admin import is_paused

    with session_scope(context.settings().database_url) as session:
        return is_paused(session, model)


@worker.command()
@click.option("--pool", default="threads", show_default=True, help=POOL_HELP)
@replica_options
def rank(pool: str, name: str | None, device: str | None) -> None:
    """Consume the rank queue."""
    _pin(device)
    registry = context.registry(context.settings())
    default = registry.default("ranker")
    _start([RANK_QUEUE], [(default.name, "ranker")] if default else [], pool,
           node_name("rank", name))


@worker.command()
@click.option("--pool", default="threads", show_default=True, help=POOL_HELP)
@replica_options
def fuse(pool: str, name: str | None, device: str | None) -> None:
    """Consume the fuse queue."""
    _pin(device)
    registry = context.registry(context.settings())
    default = registry.default("fuser")
    _start([FUSE_QUEUE], [(default.name, "fuser")] if default else [], pool,
           node_name("fuse", name))


@click.command()
@click.option("--poll", type=float, default=2.0, show_default=True,
              help="Seconds between polls when no notification arrives.")
def dispatcher(poll: float) -> None:
    """Relay the outbox to RabbitMQ until interrupted."""
    settings = context.settings()
    app = context.app(settings)
    metrics.serve_dispatcher(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        declare_dead_letters(app)
    except Exception as exc:  # the broker may be away; the workers declare it too
        click.echo(f"warning: dead-letter queue not declared yet: {exc}", err=True)
    relay.run(settings, app, stop, poll_seconds=poll)
