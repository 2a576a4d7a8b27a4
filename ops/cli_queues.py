"""``manage.py queues`` and ``manage.py workers``: what RabbitMQ and the workers are doing.

How pause, resume and purge work is documented in ``orchestration/queue_admin.py``.
Dead-lettered messages are not handled here yet (the reliability work adds them).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from db.engine import session_scope
from ops import context
from orchestration import queue_admin as qa
from orchestration.registry import RegistryError


@click.group()
def queues() -> None:
    """Queue depth and consumers; pause, resume and purge."""


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_queues(as_json: bool) -> None:
    """Every blendq queue with its depth, consumers and whether it is paused."""
    settings = context.settings()
    registry = context.registry(settings)
    with session_scope(settings.database_url) as session:
        names = qa.blendq_queues(session, registry)
        paused = {f"gen.{m}" for m in qa.paused_models(session)}
    try:
        states = qa.queue_states(settings.broker_url, names)
    except OSError as exc:
        raise click.ClickException(f"RabbitMQ is not reachable: {exc}") from exc
    rows: list[dict[str, Any]] = [{"queue": s.name, "exists": s.exists, "messages": s.messages,
             "consumers": s.consumers, "paused": s.name in paused} for s in states]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="queues")
    for column in ("queue", "messages", "consumers", "paused"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["queue"], str(row["messages"]) if row["exists"] else "(not declared)",
                      str(row["consumers"]), "PAUSED" if row["paused"] else "")
    Console(width=120).print(table)


def _set_paused(model: str, paused: bool) -> None:
    settings = context.settings()
    registry = context.registry(settings)
    app = context.app(settings)
    try:
        with session_scope(settings.database_url) as session:
            queue = qa.set_paused(session, registry, model, paused)
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    # The flag is committed first: a worker that starts meanwhile reads it.
    if paused:
        workers = qa.pause_consumers(app, queue)
        click.echo(f"{queue} paused; {len(workers)} worker(s) acknowledged cancel_consumer")
    else:
        workers = qa.resume_consumers(app, model)
        click.echo(f"{queue} resumed; consuming again on {len(workers)} worker(s): "
                   + (", ".join(workers) or "none running"))


@queues.command()
@click.argument("model")
def pause(model: str) -> None:
    """Stop every worker taking new tasks from gen.MODEL; stays paused across restarts."""
    _set_paused(model, True)


@queues.command()
@click.argument("model")
def resume(model: str) -> None:
    """Let the workers of gen.MODEL take tasks again."""
    _set_paused(model, False)


@queues.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Really remove every waiting message.")
def purge(queue: str, yes: bool) -> None:
    """Remove QUEUE's waiting messages; their chunks' open requests fail ('purged by admin').

    Pause the queue first if workers consume it, or they may take a message meanwhile.
    """
    if not yes:
        raise click.UsageError("purging drops messages for good: add --yes")
    settings = context.settings()
    registry = context.registry(settings)
    with session_scope(settings.database_url) as session:
        known = qa.blendq_queues(session, registry)
    if queue not in known:
        raise click.UsageError(f"{queue} is not a blendq queue ({', '.join(known)})")
    drained = qa.Drained(settings.broker_url, queue)
    try:
        with session_scope(settings.database_url) as session:
            qa.abandon_chunks(session, drained.chunks)
    except BaseException:
        drained.give_back()
        raise
    drained.ack()
    click.echo(f"{drained.count} message(s) purged from {queue}; "
               f"{len(drained.chunks)} chunk(s) marked '{qa.PURGE_REASON}'")


@click.group()
def workers() -> None:
    """Running workers (Celery remote inspection)."""


@workers.command("list")
@click.option("--timeout", type=float, default=1.5, show_default=True,
              help="Seconds to wait for workers to answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_workers(timeout: float, as_json: bool) -> None:
    """Host, queues consumed, active and reserved tasks, models loaded."""
    app = context.app(context.settings())
    rows = worker_rows(app, timeout)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="workers")
    for column in ("worker", "queues", "active", "reserved", "models loaded"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["worker"], ",".join(row["queues"]) or "(paused)",
                      str(len(row["active"])), str(len(row["reserved"])),
                      ", ".join(m["path"] for m in row["models"]))
    Console(width=140).print(table)


def worker_rows(app: Any, timeout: float) -> list[dict[str, Any]]:
    from workers.inspect_commands import MODELS_COMMAND

    # The first question waits the whole timeout; knowing how many answered, each one
    # after it returns as soon as they all have.
    queues_of = app.control.inspect(timeout=timeout).active_queues() or {}
    if not queues_of:
        return []
    alive = list(queues_of)
    inspect = app.control.inspect(timeout=timeout, limit=len(alive))
    active = inspect.active() or {}
    reserved = inspect.reserved() or {}
    loaded: dict[str, Any] = {}
    for reply in app.control.broadcast(MODELS_COMMAND, reply=True, timeout=timeout,
                                       limit=len(alive)) or []:
        for name, answer in reply.items():
            loaded[name] = answer.get("ok", []) if isinstance(answer, dict) else []
    names = sorted(set(queues_of) | set(active) | set(reserved) | set(loaded))
    return [{"worker": name, "host": name.split("@", 1)[-1],
             "queues": sorted(q["name"] for q in queues_of.get(name, [])),
             "active": [_task(t) for t in active.get(name, [])],
             "reserved": [_task(t) for t in reserved.get(name, [])],
             "models": loaded.get(name, [])} for name in names]


def _task(task: dict[str, Any]) -> dict[str, Any]:
    kwargs = task.get("kwargs") or {}
    return {"id": task.get("id"), "name": task.get("name"),
            "job_id": kwargs.get("job_id"), "chunk_id": kwargs.get("chunk_id")}


@queues.group()
def dead() -> None:
    """Dead-lettered messages: tasks the workers rejected for good."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dead_list(as_json: bool) -> None:
    """Every dead message with its task, origin queue, reason and job/chunk."""
    from orchestration.dead_letters import peek

    settings = context.settings()
    messages = peek(settings.broker_url)
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in messages], indent=2))
        return
    table = Table(title=f"dead letters ({len(messages)})")
    for column in ("task id", "task", "from queue", "reason", "deaths", "job", "chunk"):
        table.add_column(column)
    for m in messages:
        table.add_row(m.task_id, m.task, m.queue, m.reason, str(m.deaths),
                      str(m.kwargs.get("job_id", "")), str(m.kwargs.get("chunk_id", "")))
    Console(width=160).print(table)


@dead.command("show")
@click.argument("task_id")
def dead_show(task_id: str) -> None:
    """One dead message in full (its task arguments are ids only)."""
    from orchestration.dead_letters import peek

    found = [m for m in peek(context.settings().broker_url) if m.task_id == task_id]
    if not found:
        raise click.ClickException(f"no dead message with task id {task_id}")
    click.echo(json.dumps(found[0].as_dict(), indent=2))


@dead.command("requeue")
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead message.")
def dead_requeue(task_ids: tuple[str, ...], everything: bool) -> None:
    """Send dead messages back to the queues they came from."""
    from orchestration.dead_letters import requeue

    if not task_ids and not everything:
        raise click.UsageError("name task ids, or pass --all")
    moved = requeue(context.settings().broker_url, None if everything else set(task_ids))
    for m in moved:
        click.echo(f"{m.task_id} {m.task} -> {m.queue}")
    click.echo(f"{len(moved)} message(s) requeued")
