"""``manage.py run``: the whole pipeline in this process, on a SQLite file, no servers.

The same submission, outbox and task code as a deployment; Celery runs the canvases
eagerly instead of sending them to RabbitMQ.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlmodel import select

from db.engine import session_scope
from db.models import TERMINAL_JOB_STATUSES, Job, JobStatus, Outbox, OutboxStatus
from ops import context, dbadmin
from ops.job_io import parse_models, report_invalid, submit_file, write_results
from orchestration import outbox
from orchestration.settings import Settings, reset_settings
from orchestration.submission import AGGREGATIONS, STRATEGIES, JobOptions


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Results file (default: FILE's name with .results.jsonl, here).")
@click.option("--models", help="Comma-separated generators (default: every generator).")
@click.option("--fuser", help="Fuser name, or 'none' to keep the top-ranked candidate.")
@click.option("--top-k", type=int, help="Candidates the fuser reads (default: up to 3).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="full", show_default=True,
              help="Which pairs the ranker compares.")
@click.option("--aggregation", type=click.Choice(AGGREGATIONS), default="max_logits",
              show_default=True)
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file (default: blendq-embedded.db in the model cache).")
def run(file: Path, output: Path | None, models: str | None, fuser: str | None,
        top_k: int | None, strategy: str, aggregation: str, db_path: Path | None) -> None:
    """Run FILE through generate → rank → fuse in this process and write the results."""
    settings = _embedded_settings(db_path)
    app = context.app(settings, eager=True)
    registry = context.registry(settings)
    chosen = parse_models(models, registry)
    dbadmin.upgrade(settings.database_url)
    options = JobOptions(models=chosen, fuser=fuser,
                         top_k=top_k if top_k is not None else min(3, len(chosen)),
                         chunk_size=settings.chunk_size, strategy=strategy,
                         aggregation=aggregation)
    import importlib

    from ops.cli_processes import WORKER_MODULES

    for module in WORKER_MODULES:
        importlib.import_module(module)
    submitted = submit_file(settings, app, registry, file, options)
    job = submitted.job
    if job.status == JobStatus.FAILED:
        report_invalid(job)
        raise SystemExit(1)
    publish = outbox.celery_publisher(app)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task(f"{job.id}", total=job.total)
        while True:
            # One canvas at a time, so the bar moves per chunk.
            with session_scope(settings.database_url) as session:
                handled = outbox.relay(session, publish, limit=1)
            with session_scope(settings.database_url) as session:
                current = session.get(Job, job.id)
            assert current is not None
            progress.update(bar, completed=current.completed + current.failed,
                            description=f"{job.id} {current.status}")
            if not handled:
                break
    if current.status not in TERMINAL_JOB_STATUSES:
        with session_scope(settings.database_url) as session:
            stuck = session.exec(select(Outbox).where(Outbox.job_id == job.id,
                                                      Outbox.status == OutboxStatus.PENDING)
                                 ).first()
        reason = stuck.last_error if stuck is not None else "no work left to run"
        raise click.ClickException(f"{job.id} stopped {current.status}: {reason}")
    out = output or Path.cwd() / (file.stem + ".results.jsonl")
    count = write_results(settings, job.id, out)
    click.echo(f"{job.id} {current.status}: {current.completed} completed, "
               f"{current.failed} failed; {count} lines written to {out}")


def _embedded_settings(db_path: Path | None) -> Settings:
    # The progress bar is the interface here; per-task logs only when asked for.
    os.environ.setdefault("BLENDQ_LOG_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    reset_settings()
    base = context.settings()
    path = db_path or base.model_cache / "blendq-embedded.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ["BLENDQ_DATABASE_URL"] = f"sqlite:///{path.resolve()}"
    reset_settings()
    return context.settings()
