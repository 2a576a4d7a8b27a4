"""Submitting a job: validate the whole file, then write job, requests and outbox at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import Celery
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from db import core
from db.models import ChunkStage, ChunkStatus, Job, JobStatus, Request, RequestStatus, utcnow
from db.writes import copy_insert_ignore
from orchestration import outbox
from orchestration.canvas import chunk_canvas, to_payload
from orchestration.lifecycle import transition
from orchestration.registry import Registry, RegistryError
from orchestration.validation import LineCheck, ValidationResult, validate_lines

log = structlog.get_logger(__name__)
# Kept equal to workers.ranking.strategies (orchestration never imports workers; a unit
# test checks the two agree).
STRATEGIES = ("full", "half", "bubble", "topk")
AGGREGATIONS = ("max_logits", "max_wins")
NO_FUSER = "none"


class SubmissionError(ValueError):
    """The job's options are wrong; nothing was stored."""


@dataclass
class JobOptions:
    models: list[str]
    ranker: str | None = None
    fuser: str | None = None  # None: the registry's default; "none": keep the top candidate
    top_k: int = 3
    chunk_size: int = 8
    strategy: str = "full"
    aggregation: str = "max_logits"
    tenant: str = "default"
    idempotency_key: str | None = None
    completion_window_hours: int = 24
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Submitted:
    job: Job
    created: bool
    validation: ValidationResult | None = None


def resolve_options(options: JobOptions, registry: Registry) -> JobOptions:
    """Check options against the registry and fill in the default ranker and fuser."""
    if not options.models:
        raise SubmissionError("--models: name at least one generator")
    if len(set(options.models)) != len(options.models):
        raise SubmissionError("--models: a model is named twice")
    for name in options.models:
        _check(registry, name, "generator", "--models")
    ranker = options.ranker or _default(registry, "ranker")
    _check(registry, ranker, "ranker", "--ranker")
    fuser = options.fuser
    if fuser is None:
        default_fuser = registry.default("fuser")
        fuser = default_fuser.name if default_fuser else NO_FUSER
    if fuser != NO_FUSER:
        _check(registry, fuser, "fuser", "--fuser")
    if not 1 <= options.top_k <= len(options.models):
        raise SubmissionError(
            f"--top-k: must be between 1 and the number of models ({len(options.models)}), "
            f"got {options.top_k}")
    if options.chunk_size < 1:
        raise SubmissionError(f"--chunk-size: must be at least 1, got {options.chunk_size}")
    if options.strategy not in STRATEGIES:
        raise SubmissionError(f"--strategy: must be one of {', '.join(STRATEGIES)}")
    if options.aggregation not in AGGREGATIONS:
        raise SubmissionError(f"--aggregation: must be one of {', '.join(AGGREGATIONS)}")
    return JobOptions(**{**options.__dict__, "ranker": ranker, "fuser": fuser})


def _check(registry: Registry, name: str, role: str, option: str) -> None:
    try:
        registry.get(name, role)
    except RegistryError as exc:
        raise SubmissionError(f"{option}: {exc}") from exc


def _default(registry: Registry, role: str) -> str:
    entry = registry.default(role)
    if entry is None:
        raise SubmissionError(f"--{role}: the registry names no default {role}; choose one")
    return entry.name


def find_existing(session: Session, tenant: str, key: str | None) -> Job | None:
    if key is None:
        return None
    return session.exec(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    ).one_or_none()


def submit(session: Session, app: Celery, lines: Iterable[bytes], options: JobOptions,
           registry: Registry, input_file: str | None = None, *,
           check: LineCheck | None = None, defer: bool = False) -> Submitted:
    """Validate and store a job in the caller's transaction (the caller commits).

    The same idempotency key returns the job that already holds it, whatever the file.
    ``check`` refuses lines beyond their shape (validate_lines). ``defer``: store the job
    as ``validating`` and read none of ``lines``; ``validate_job`` does the rest later (the
    Batch API answers a create before it reads the file, as OpenAI's does).
    """
    existing = find_existing(session, options.tenant, options.idempotency_key)
    if existing is not None:
        return Submitted(existing, created=False)
    options = resolve_options(options, registry)
    validation = None if defer else validate_lines(lines, check)
    now = utcnow()
    job = Job(
        tenant=options.tenant, idempotency_key=options.idempotency_key,
        input_file=input_file, models=options.models, ranker=options.ranker,
        fuser=None if options.fuser == NO_FUSER else options.fuser, strategy=options.strategy,
        aggregation=options.aggregation, top_k=options.top_k, chunk_size=options.chunk_size,
        meta=options.metadata or None, created_at=now,
        expires_at=now + timedelta(hours=options.completion_window_hours),
    )
    if validation is not None:
        _settle(job, validation, now)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # Another submission with the same key committed first.
        found = find_existing(session, options.tenant, options.idempotency_key)
        if found is None:
            raise
        return Submitted(found, created=False)
    if validation is not None and validation.ok:
        _store_requests(session, app, job, validation, options)
    log.info("job.submitted", job_id=job.id, status=job.status, requests=job.total,
             errors=None if validation is None else validation.error_count)
    return Submitted(job, created=True, validation=validation)


def validate_job(session: Session, app: Celery, job: Job, lines: Iterable[bytes],
                 check: LineCheck | None = None) -> ValidationResult:
    """Validate the lines of a job stored ``validating`` (``submit(defer=True)``; the caller
    holds its row lock and commits): it becomes in_progress with its requests and canvases,
    or failed with the errors."""
    validation = validate_lines(lines, check)
    _settle(job, validation, utcnow())
    session.add(job)
    if validation.ok:
        _store_requests(session, app, job, validation,
                        JobOptions(models=list(job.models), chunk_size=job.chunk_size))
    log.info("job.validated", job_id=job.id, status=job.status, requests=job.total,
             errors=validation.error_count)
    return validation


def _settle(job: Job, validation: ValidationResult, now: datetime) -> None:
    if validation.ok:
        transition(job, JobStatus.IN_PROGRESS, now)
        job.total = len(validation.requests)
    else:
        transition(job, JobStatus.FAILED, now)
        job.errors = [e.as_dict() for e in validation.errors]
        if validation.error_count > len(validation.errors):
            job.errors.append({"line": 0, "field": "(file)", "message":
                               f"{validation.error_count - len(validation.errors)} more errors"})


def _store_requests(session: Session, app: Celery, job: Job, validation: ValidationResult,
                    options: JobOptions) -> None:
    """The job's chunks in one statement, its requests in one COPY (the job is new: no row
    can conflict; column names, so the caller's metadata goes to "metadata") and its
    canvases in one: a 50,000-line job was 782 rounds of four statements."""
    parsed = validation.requests
    bounds = chunk_bounds(len(parsed), options.chunk_size)
    if not bounds:
        return
    session.flush()  # the job row, which the chunks refer to
    chunk_ids = _insert_chunks(session, job.id, [end - start for start, end in bounds])
    copy_insert_ignore(session, Request, [
        {"job_id": job.id, "chunk_id": chunk_id, "line_no": p.line_no,
         "custom_id": p.custom_id, "instruction": p.instruction, "input": p.input,
         "messages": p.messages, "params": p.params, "metadata": p.metadata,
         "status": RequestStatus.PENDING}
        for chunk_id, (start, end) in zip(chunk_ids, bounds, strict=True)
        for p in parsed[start:end]
    ])
    job.chunks_left += len(bounds)
    outbox.add_many(session, outbox.KIND_CANVAS, [
        outbox.Queued(to_payload(chunk_canvas(app, job.id, chunk_id, options.models)),
                      job_id=job.id, chunk_id=chunk_id, dedup_key=f"chunk:{chunk_id}")
        for chunk_id in chunk_ids])


def _insert_chunks(session: Session, job_id: str, sizes: list[int]) -> list[int]:
    """New pending chunks of ``sizes``, their ids in index order."""
    c = core.chunk.c
    rows = [{"job_id": job_id, "index": index, "size": size, "status": ChunkStatus.PENDING,
             "stage": ChunkStage.GENERATE, "sweeps": 0, "epoch": 0}
            for index, size in enumerate(sizes)]
    return list(session.execute(
        insert(core.chunk).returning(c.id, sort_by_parameter_order=True), rows).scalars())


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of ``size`` requests; the last may be shorter."""
    return [(s, min(s + size, total)) for s in range(0, total, size)]
