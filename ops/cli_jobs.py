"""``manage.py jobs``: submit, watch, collect and cancel jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db.engine import session_scope
from db.models import TERMINAL_JOB_STATUSES, Job, JobStatus
from db.queries import job_summary
from ops import context
from ops.cli_jobs_admin import list_cmd, retry, show
from ops.job_io import parse_models, report_invalid, submit_file, write_results
from orchestration.lifecycle import cancel_job
from orchestration.submission import AGGREGATIONS, STRATEGIES, JobOptions


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
def submit_cmd(file: Path, models: str | None, ranker: str | None, fuser: str | None,
               top_k: int | None, idempotency_key: str | None, chunk_size: int | None,
               strategy: str, aggregation: str, tenant: str) -> None:
    """Validate FILE (JSONL) and queue it as a job; prints the job id."""
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
    click.echo(submitted.job.id)
    if not submitted.created:
        click.echo("an existing job holds this idempotency key", err=True)
    if submitted.job.status == JobStatus.FAILED:
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
@click.option("--watch", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--interval", type=float, default=1.0, show_default=True)
def status(job_id: str, as_json: bool, watch: bool, interval: float) -> None:
    """Show a job's status and request counts."""
    settings = context.settings()
    if watch:
        _watch(settings.database_url, job_id, interval)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        summary = job_summary(session, job)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    counts = summary["request_counts"]
    click.echo(f"{job_id}  {summary['status']}  total {counts['total']}  completed "
               f"{counts['completed']}  failed {counts['failed']}  chunks {summary['chunks']}")
    for error in summary["errors"]:
        click.echo(f"  line {error['line']}: {error['field']}: {error['message']}")


def _watch(url: str, job_id: str, interval: float) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        job = _load(url, job_id)
        task = progress.add_task(job.status, total=job.total or None)
        while True:
            job = _load(url, job_id)
            progress.update(task, completed=job.completed + job.failed, total=job.total,
                            description=f"{job_id} {job.status}")
            if JobStatus(job.status) in TERMINAL_JOB_STATUSES:
                return
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
def cancel(job_id: str) -> None:
    """Start no new chunk; running chunks finish and their results are kept."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        job = cancel_job(session, job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        click.echo(f"{job.id} {job.status}")


for _command in (list_cmd, show, retry):
    jobs.add_command(_command)
