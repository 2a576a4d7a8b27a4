"""``manage.py queues`` and ``manage.py workers``: what RabbitMQ and the workers are doing.

How pause, resume and purge work is documented in ``orchestration/queue_admin.py``. Every
command takes a queue as ``queues list`` names it (``gen.tiny-a``, ``rank``) or a
generator's queue by its model (``tiny-a``). ``--json`` keys are listed in the README.
"""

from __future__ import annotations

import json
from typing import Any

import click
from sqlmodel import Session

from db.engine import session_scope
from ops import context
from ops.tables import cell, print_table
from orchestration import queue_admin as qa
from orchestration.celery_app import gen_queue


@click.group()
def queues() -> None:
    """Queue depth and consumers; pause, resume and purge."""


def _known(session: Session) -> list[str]:
    return qa.blendq_queues(session, context.registry(context.settings()))


def _resolve(session: Session, name: str) -> str:
    try:
        return qa.resolve_queue(name, _known(session))
    except qa.QueueError as exc:
        raise click.UsageError(str(exc)) from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@queues.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_queues(as_json: bool) -> None:
    """Every blendq queue (dead letters too) with its depth, consumers and pause flag."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        names = _known(session)
        paused = {gen_queue(m) for m in qa.paused_models(session)}
    try:
        states = qa.queue_states(settings.broker_url, names)
    except OSError as exc:
        raise click.ClickException(f"RabbitMQ is not reachable: {exc}") from exc
    rows: list[dict[str, Any]] = [{"queue": s.name, "exists": s.exists, "messages": s.messages,
                                   "consumers": s.consumers, "paused": s.name in paused}
                                  for s in states]
    if as_json:
        _echo_json(rows)
        return
    print_table("queues", ("queue", "messages", "consumers", "paused"), [
        (r["queue"], str(r["messages"]) if r["exists"] else "not declared yet",
         str(r["consumers"]), "PAUSED" if r["paused"] else "-") for r in rows])


def _set_paused(name: str, paused: bool, timeout: float, as_json: bool) -> None:
    settings = context.settings()
    registry = context.registry(settings)
    app = context.app(settings)
    try:
        with session_scope(settings.database_url) as session:
            queue = qa.resolve_queue(name, qa.blendq_queues(session, registry))
            qa.set_paused(session, registry, qa.model_of(queue), paused)
    except qa.QueueError as exc:
        raise click.UsageError(str(exc)) from exc
    # The flag is committed first: a worker that starts meanwhile reads it.
    if paused:
        change = qa.pause_consumers(app, settings.broker_url, queue, timeout)
    else:
        change = qa.resume_consumers(app, settings.broker_url, queue, timeout)
    if as_json:
        _echo_json({**change.as_dict(), "paused": paused})
        return
    done = "paused" if paused else "resumed"
    if not change.workers:
        who = ("no worker consumed it" if paused else
               "no running worker was started for it (one started later consumes it)")
        click.echo(f"{queue} {done}; {who}; consumers now {change.consumers}")
        return
    kind = "consuming worker(s)" if paused else "worker(s) started for it"
    click.echo(f"{queue} {done}; {len(change.acknowledged)} of {len(change.workers)} {kind} "
               f"acknowledged: {', '.join(change.acknowledged) or 'none'}; "
               f"consumers now {change.consumers}")
    silent = sorted(set(change.workers) - set(change.acknowledged))
    if silent:
        click.echo(f"warning: no answer from {', '.join(silent)}", err=True)


TIMEOUT = click.option("--timeout", type=float, default=2.0, show_default=True,
                       help="Seconds to wait for the workers to answer.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@queues.command()
@click.argument("queue")
@TIMEOUT
@AS_JSON
def pause(queue: str, timeout: float, as_json: bool) -> None:
    """Every replica stops taking tasks from QUEUE (gen.MODEL or MODEL); stays paused
    across restarts."""
    _set_paused(queue, True, timeout, as_json)


@queues.command()
@click.argument("queue")
@TIMEOUT
@AS_JSON
def resume(queue: str, timeout: float, as_json: bool) -> None:
    """Every worker started for QUEUE (gen.MODEL or MODEL) takes its tasks again."""
    _set_paused(queue, False, timeout, as_json)


@queues.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Really remove every waiting message.")
@AS_JSON
def purge(queue: str, yes: bool, as_json: bool) -> None:
    """Remove QUEUE's waiting messages; their chunks' open requests fail ('purged by admin').

    QUEUE as ``queues list`` names it, or a generator's model. Messages a worker holds
    already are not waiting and stay: pause the queue first so every replica lets go.
    """
    if not yes:
        raise click.UsageError("purging drops messages for good: add --yes")
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        queue = _resolve(session, queue)
    [before] = qa.queue_states(settings.broker_url, [queue])
    if not before.exists:
        # Nothing ever declared it (no worker or publish yet), so nothing waits on it.
        if as_json:
            _echo_json({"queue": queue, "exists": False, "messages": 0, "chunks": [],
                        "reason": qa.PURGE_REASON, "consumers": 0})
        else:
            click.echo(f"0 message(s) purged from {queue}: it is not declared yet")
        return
    drained = qa.Drained(settings.broker_url, queue)
    try:
        with session_scope(settings.database_url) as session:
            qa.abandon_chunks(session, drained.chunks)
    except BaseException:
        drained.give_back()
        raise
    drained.ack()
    [state] = qa.queue_states(settings.broker_url, [queue])
    if as_json:
        _echo_json({"queue": queue, "exists": True, "messages": drained.count,
                    "chunks": sorted(drained.chunks),
                    "reason": qa.PURGE_REASON, "consumers": state.consumers})
        return
    click.echo(f"{drained.count} message(s) purged from {queue}; "
               f"{len(drained.chunks)} chunk(s) marked '{qa.PURGE_REASON}'")
    if state.consumers:
        click.echo(f"warning: {state.consumers} worker(s) still consume {queue}; a message "
                   "one of them held was not purged (queues pause first)", err=True)


@click.group()
def workers() -> None:
    """Running workers (Celery remote inspection)."""


@workers.command("list")
@click.option("--timeout", type=float, default=1.5, show_default=True,
              help="Seconds to wait for workers to answer.")
@AS_JSON
def list_workers(timeout: float, as_json: bool) -> None:
    """Every worker replica: node name, host, pid, device, queues, tasks, models loaded."""
    app = context.app(context.settings())
    rows = [r.as_dict() for r in qa.replicas(app, timeout)]
    if as_json:
        _echo_json(rows)
        return
    print_table(f"workers ({len(rows)})",
                ("worker", "host", "pid", "device", "queues", "paused", "active", "reserved",
                 "models loaded"),
                [(r["worker"], r["host"], cell(r["pid"]), cell(r["device"]),
                  ",".join(r["queues"]) or "-", ",".join(r["paused"]) or "-",
                  str(len(r["active"])), str(len(r["reserved"])),
                  ", ".join(m["path"] for m in r["models"]) or "-") for r in rows])


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
    print_table(f"dead letters ({len(messages)})",
                ("task id", "task", "from queue", "reason", "deaths", "job", "chunk"),
                [(m.task_id, m.task, m.queue, cell(m.reason), str(m.deaths),
                  cell(m.kwargs.get("job_id")), cell(m.kwargs.get("chunk_id")))
                 for m in messages])


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
@AS_JSON
def dead_requeue(task_ids: tuple[str, ...], everything: bool, as_json: bool) -> None:
    """Send dead messages back to the queues they came from."""
    from orchestration.dead_letters import requeue

    if not task_ids and not everything:
        raise click.UsageError("name task ids, or pass --all")
    moved = requeue(context.settings().broker_url, None if everything else set(task_ids))
    if as_json:
        _echo_json([{"task_id": m.task_id, "task": m.task, "queue": m.queue} for m in moved])
        return
    for m in moved:
        click.echo(f"{m.task_id} {m.task} -> {m.queue}")
    click.echo(f"{len(moved)} message(s) requeued")
