"""``manage.py jobs``: submit, watch, collect and cancel jobs.

``jobs status --watch`` exits with the job's end state, so a script can branch on it:
0 completed, 3 failed, 4 expired, 5 cancelled, 6 still running when ``--timeout`` ran out;
1 is any other error (no such job, a server unreachable), 2 a usage error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db.engine import session_scope
from db.models import TERMINAL_JOB_STATUSES, Job, JobStatus
from db.queries import job_summary
from ops import context
from ops.cli_jobs_admin import list_cmd, recount, retry, show
from ops.job_io import parse_models, report_invalid, submit_file, write_results
from orchestration.lifecycle import cancel_job
from orchestration.submission import AGGREGATIONS, STRATEGIES, JobOptions

EXIT_CODES = {JobStatus.COMPLETED: 0, JobStatus.FAILED: 3, JobStatus.EXPIRED: 4,
              JobStatus.CANCELLED: 5}
EXIT_STILL_RUNNING = 6


@click.group()
def jobs() -> None:
    """Submit jobs, follow them, fetch their results, cancel them."""


@jobs.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--models", help="Comma-separated generators (default: every generator).")
@click.option("--ranker", help="Ranker name (default: the registry's default ranker).")
@click.option("--fuser", help="Fuser name, or 'none' to keep the top-ranked candidate.")
@click.option("--top-k", type=int,
              help="Candidates the fuser reads (default: 3, or fewer models if fewer).")
@click.option("--idempotency-key", help="Submitting the same key again returns the same job.")
@click.option("--chunk-size", type=int, help="Requests per canvas (default: BLENDQ_CHUNK_SIZE).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="full", show_default=True,
              help="Which pairs the ranker compares (see workers/ranking/strategies.py).")
@click.option("--aggregation", type=click.Choice(AGGREGATIONS), default="max_logits",
              show_default=True, help="How pairwise logits become scores.")
@click.option("--tenant", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print {id, status, created, total} instead of the bare id.")
def submit_cmd(file: Path, models: str | None, ranker: str | None, fuser: str | None,
               top_k: int | None, idempotency_key: str | None, chunk_size: int | None,
               strategy: str, aggregation: str, tenant: str, as_json: bool) -> None:
    """Validate FILE (JSONL) and queue it as a job; prints the job id.

    Exits 1 when the file is invalid (the job is stored as failed, its errors on stderr)."""
    settings = context.settings()
    app = context.app(settings)
    registry = context.registry(settings)
    chosen = parse_models(models, registry)
    options = JobOptions(models=chosen, ranker=ranker, fuser=fuser,
                         top_k=top_k if top_k is not None else min(3, len(chosen)),
                         chunk_size=chunk_size or settings.chunk_size, tenant=tenant,
                         strategy=strategy, aggregation=aggregation,
                         idempotency_key=idempotency_key)
    submitted = submit_file(settings, app, registry, file, options)
    if as_json:
        job = submitted.job
        click.echo(json.dumps({"id": job.id, "status": job.status,
                               "created": submitted.created, "total": job.total,
                               "errors": job.errors or []}, indent=2))
    else:
        click.echo(submitted.job.id)
    if not submitted.created:
        click.echo("an existing job holds this idempotency key", err=True)
    if submitted.job.status == JobStatus.FAILED:
        if not as_json:
            report_invalid(submitted.job)
        raise SystemExit(1)


def _load(settings_url: str, job_id: str) -> Job:
    with session_scope(settings_url) as session:
        job = session.get(Job, job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    return job


@jobs.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True,
              help="Follow the job until it ends and exit with its end state: 0 completed, "
                   "3 failed, 4 expired, 5 cancelled (6: still running at --timeout).")
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--timeout", type=float, default=None,
              help="With --watch: stop after this many seconds (exit 6 if not ended).")
def status(job_id: str, as_json: bool, watch: bool, interval: float,
           timeout: float | None) -> None:
    """Show a job's status and request counts (with --watch, until it ends)."""
    settings = context.settings()
    ended = _watch(settings.database_url, job_id, interval, timeout) if watch else True
    summary = _summary(settings.database_url, job_id)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for line in status_lines(summary):
            click.echo(line)
    if watch:
        raise SystemExit(EXIT_CODES[JobStatus(summary["status"])] if ended
                         else EXIT_STILL_RUNNING)


def _summary(url: str, job_id: str) -> dict[str, Any]:
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        return job_summary(session, job)


def status_lines(summary: dict[str, Any]) -> list[str]:
    """The human form of ``jobs status``: counts as words, never a Python repr."""
    counts = summary["request_counts"]
    chunks = "  ".join(f"{k} {v}" for k, v in sorted(summary["chunks"].items())) or "none"
    lines = [f"{summary['id']}  {summary['status']}  total {counts['total']}  "
             f"completed {counts['completed']}  failed {counts['failed']}  chunks: {chunks}"]
    lines += [f"  line {e['line']}: {e['field']}: {e['message']}" for e in summary["errors"]]
    return lines


def _watch(url: str, job_id: str, interval: float, timeout: float | None) -> bool:
    """Follow the job; True once it ended, False when ``timeout`` ran out first. The
    progress bar goes to stderr, so stdout holds only the final status (or its JSON)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    deadline = None if timeout is None else time.monotonic() + timeout
    console = Console(stderr=True)
    # Off a terminal the bar would print a line per refresh into a log: only the end.
    with Progress(*columns, console=console, transient=False,
                  disable=not sys.stderr.isatty()) as progress:
        job = _load(url, job_id)
        task = progress.add_task(job.status, total=job.total or None)
        while True:
            job = _load(url, job_id)
            progress.update(task, completed=job.completed + job.failed, total=job.total,
                            description=f"{job_id} {job.status}")
            if JobStatus(job.status) in TERMINAL_JOB_STATUSES:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(interval)


@jobs.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write one JSON line per request.")
def results(job_id: str, output: Path) -> None:
    """Write a job's results (partial ones too, for a job still running)."""
    settings = context.settings()
    _load(settings.database_url, job_id)
    count = write_results(settings, job_id, output)
    click.echo(f"{count} lines written to {output}")


@jobs.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print {id, status} as JSON.")
def cancel(job_id: str, as_json: bool) -> None:
    """Start no new chunk; running chunks finish and their results are kept."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        job = cancel_job(session, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        shown = {"id": job.id, "status": str(job.status)}
    click.echo(json.dumps(shown) if as_json else f"{shown['id']} {shown['status']}")


for _command in (list_cmd, show, retry, recount):
    jobs.add_command(_command)
