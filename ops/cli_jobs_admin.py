"""``manage.py jobs list|show|retry``: the admin side of jobs (attached in ops/cli_jobs.py)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import click

from db.engine import session_scope
from db.models import Job, JobStatus, utcnow
from db.queries_admin import job_stages, list_jobs
from ops import context
from ops.tables import MISSING, cell, print_table
from orchestration.retry import RetryError, retry_failed

_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """An age (``30m``, ``2h``, ``7d``) or an ISO timestamp; naive timestamps are UTC."""
    if value is None:
        return None
    match = _AGE.match(value.strip())
    if match:
        return (now or utcnow()) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use an age like 2h or 7d, or an ISO time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


@click.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--tenant")
@click.option("--since", help="Jobs created within this age (2h, 7d) or after an ISO time.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(status: str | None, tenant: str | None, since: str | None, limit: int,
             as_json: bool) -> None:
    """Jobs, newest first."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        rows = list_jobs(session, status=status, tenant=tenant, since=parse_since(since),
                         limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(f"jobs ({len(rows)})",
                ("id", "status", "tenant", "total", "completed", "failed", "created"),
                [(r["id"], r["status"], r["tenant"], str(r["total"]), str(r["completed"]),
                  str(r["failed"]), cell(r["created_at"])) for r in rows])


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(job_id: str, as_json: bool) -> None:
    """Counts per stage, errors grouped by reason, and timings of one job."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        stages = job_stages(session, job)
    if as_json:
        click.echo(json.dumps(stages, indent=2))
        return
    _print(stages)


def _print(s: dict[str, Any]) -> None:
    for line in show_lines(s):
        click.echo(line)


def show_lines(s: dict[str, Any]) -> list[str]:
    """The human form of ``jobs show``: words and ``-`` for what has not happened, never a
    Python ``None`` or repr."""
    lines = [f"{s['id']}  {s['status']}  tenant {s['tenant']}  models {','.join(s['models'])}  "
             f"ranker {s['ranker'] or 'default'}  fuser {s['fuser'] or 'none'}",
             "requests:    " + "  ".join(f"{k} {v}" for k, v in s["requests"].items()),
             "chunks:      " + ("  ".join(f"{k} {v}" for k, v in s["chunks"].items())
                                or MISSING),
             f"candidates:  ok {s['candidates']['ok']}  failed {s['candidates']['failed']}"]
    for model, c in s["candidates"]["by_model"].items():
        latency = MISSING if c["avg_latency_ms"] is None else f"{c['avg_latency_ms']} ms"
        lines.append(f"  {model}: ok {c['ok']}  failed {c['failed']}  avg latency {latency}")
    lines.append(f"comparisons: {s['comparisons']}  rankings: {s['rankings']}  "
                 f"fusions: {s['fusions']}")
    errors = s["errors"]
    if errors["requests"] or errors["candidates"] or errors["validation"]:
        lines.append("errors:")
    lines += [f"  {e['count']:>5}  request: {e['reason']}" for e in errors["requests"]]
    lines += [f"  {e['count']:>5}  {e['model']}: {e['reason']}" for e in errors["candidates"]]
    lines += [f"         line {e['line']}: {e['field']}: {e['message']}"
              for e in errors["validation"]]
    t = s["timings"]
    if t["ended_at"] is None:
        lines.append(f"timings: created {t['created_at']}  not ended yet")
    else:
        lines.append(f"timings: created {t['created_at']}  ended {t['ended_at']}  "
                     f"duration {t['duration_s']} s")
    for stage in ("generation", "ranking", "fusion"):
        first, last = t[stage]
        span = "not started" if first is None and last is None else (
            f"{cell(first)} .. {cell(last)}")
        lines.append(f"  {stage:<10} {span}")
    lines += [f"retried {r['requests']} request(s) at {r['at']}" for r in s["retries"]]
    return lines


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print {id, status, requests, chunks} as JSON.")
def retry(job_id: str, as_json: bool) -> None:
    """Run a finished job's failed requests again (see orchestration/retry.py)."""
    settings = context.settings()
    app = context.app(settings)
    try:
        with session_scope(settings.database_url) as session:
            done = retry_failed(session, app, job_id)
    except RetryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"id": job_id, "status": str(done["status"]),
                               "requests": done["requests"], "chunks": done["chunks"]}))
        return
    if not done["requests"]:
        click.echo(f"{job_id}: no failed request to retry")
        return
    click.echo(f"{job_id} {done['status']}: {done['requests']} request(s) in "
               f"{done['chunks']} chunk(s) queued again")


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print {id, status, total, completed, failed, chunks_left, before} as JSON.")
def recount(job_id: str, as_json: bool) -> None:
    """Recompute a job's counts from its rows (a repair: the pipeline moves them per chunk)."""
    from orchestration import lifecycle

    settings = context.settings()
    with session_scope(settings.database_url) as session:
        job = lifecycle.lock_job(session, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        before = {"total": job.total, "completed": job.completed, "failed": job.failed,
                  "chunks_left": job.chunks_left}
        lifecycle.recount(session, job)
        lifecycle.maybe_finalize(session, job)
        after = {"total": job.total, "completed": job.completed, "failed": job.failed,
                 "chunks_left": job.chunks_left}
        status = str(job.status)
    if as_json:
        click.echo(json.dumps({"id": job_id, "status": status, **after, "before": before}))
        return
    changed = ", ".join(f"{k} {before[k]} -> {v}" for k, v in after.items() if before[k] != v)
    click.echo(f"{job_id} {status}: " + (changed or "counts were right"))
