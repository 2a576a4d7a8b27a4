"""Submitting a file and writing results: shared by ``jobs`` and the embedded ``run``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from celery import Celery

from db.engine import session_scope
from db.models import Job
from db.queries import result_lines
from orchestration.registry import Registry
from orchestration.settings import Settings
from orchestration.submission import JobOptions, SubmissionError, Submitted, submit


def submit_file(settings: Settings, app: Celery, registry: Registry, path: Path,
                options: JobOptions) -> Submitted:
    try:
        with path.open("rb") as handle, session_scope(settings.database_url) as session:
            return submit(session, app, handle, options, registry, input_file=str(path))
    except SubmissionError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from exc


def report_invalid(job: Job) -> None:
    click.echo(f"job {job.id} failed validation; nothing was dispatched:", err=True)
    for error in job.errors or []:
        click.echo(f"  line {error['line']}: {error['field']}: {error['message']}", err=True)


def write_results(settings: Settings, job_id: str, out: Path) -> int:
    count = 0
    tmp = out.with_name(out.name + ".part")
    with session_scope(settings.database_url) as session, tmp.open("w",
                                                                   encoding="utf-8") as handle:
        for line in result_lines(session, job_id):
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(out)
    return count


def parse_models(value: str | None, registry: Registry) -> list[str]:
    if value:
        return [m.strip() for m in value.split(",") if m.strip()]
    return [e.name for e in registry.by_role("generator")]
