"""The tables: what an auditor needs to reconstruct any decision (which candidates each
model wrote, every pairwise comparison that ran, the ranking and the fusion built on them,
and people's labels), plus the bookkeeping that moves a job along."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel, UniqueConstraint

from db import clock

# JSONB on Postgres (indexable, compact); plain JSON on the embedded SQLite file.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """This host's clock (db/clock.py: leases are on the database's)."""
    return clock.host_now()


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _json(nullable: bool = True, default: Any = None) -> Any:
    if default is None:
        return Field(default=None, sa_column=Column(JSONType, nullable=nullable))
    return Field(default_factory=default, sa_column=Column(JSONType, nullable=nullable))


def _fk(target: str, nullable: bool = False, index: bool = True) -> Any:
    return Field(
        default=None,
        sa_column=Column(BigId, ForeignKey(target, ondelete="CASCADE"), nullable=nullable,
                         index=index),
    )


class JobStatus(StrEnum):
    """The OpenAI Batch API states."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)


class ChunkStatus(StrEnum):
    PENDING = "pending"  # its canvas waits in the outbox
    DISPATCHED = "dispatched"  # published, no task has started it yet
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


ACTIVE_CHUNK_STATUSES = (ChunkStatus.PENDING, ChunkStatus.DISPATCHED, ChunkStatus.RUNNING)


class ChunkStage(StrEnum):
    """Which stage an active chunk waits on or is in: the sweeper re-publishes that one."""

    GENERATE = "generate"
    RANK = "rank"
    FUSE = "fuse"


class RequestStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DROPPED = "dropped"  # its job was cancelled before it went out
    FAILED = "failed"  # could not be published after many attempts


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_job_tenant_idempotency_key"),
        Index("ix_job_status_created", "status", "created_at"),
    )

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=64)
    tenant: str = Field(default="default", max_length=128, index=True)
    idempotency_key: str | None = Field(default=None, max_length=256)
    status: str = Field(default=JobStatus.VALIDATING, max_length=16)
    input_file: str | None = Field(default=None, max_length=1024)
    models: list[str] = _json(nullable=False, default=list)
    ranker: str | None = Field(default=None, max_length=128)
    fuser: str | None = Field(default=None, max_length=128)
    strategy: str = Field(default="full", max_length=32)
    aggregation: str = Field(default="max_logits", max_length=32)
    top_k: int = Field(default=3)
    chunk_size: int = Field(default=8)
    total: int = Field(default=0)
    completed: int = Field(default=0)
    failed: int = Field(default=0)
    # Chunks not yet done or cancelled: each chunk's end moves the counts by its own
    # requests and this down by one, so finishing costs O(chunk), not O(job).
    chunks_left: int = Field(default=0)
    errors: list[dict[str, Any]] | None = _json()
    meta: dict[str, Any] | None = Field(
        default=None, sa_column=Column("metadata", JSONType, nullable=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    in_progress_at: datetime | None = _ts()
    finalizing_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    expired_at: datetime | None = _ts()
    expires_at: datetime | None = _ts()
    cancelling_at: datetime | None = _ts()
    cancelled_at: datetime | None = _ts()


class Chunk(SQLModel, table=True):
    """A slice of a job's requests that travels through the stages as one canvas."""

    __tablename__ = "chunk"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_chunk_job_index"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    job_id: str = Field(foreign_key="job.id", ondelete="CASCADE", index=True, max_length=64)
    index: int
    # Indexed: the ranking worker looks for running chunks to rank together.
    status: str = Field(default=ChunkStatus.PENDING, max_length=16, index=True)
    stage: str = Field(default=ChunkStage.GENERATE, max_length=16)
    # While the chunk is active: until when it is known to be alive. A worker on it renews
    # this; a message waiting on a queue gets a start bound. Past it, the sweeper acts.
    lease_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True, index=True))
    # How often the sweeper re-published it (reset by a retry); past the bound it fails.
    sweeps: int = Field(default=0)
    # Bumped by every re-publication (sweep or retry): it keys the outbox rows of the new
    # messages, since the earlier keys are taken.
    epoch: int = Field(default=0)
    size: int
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class Request(SQLModel, table=True):
    __tablename__ = "request"
    __table_args__ = (
        UniqueConstraint("job_id", "custom_id", name="uq_request_job_custom_id"),
        Index("ix_request_job_status", "job_id", "status"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    job_id: str = Field(foreign_key="job.id", ondelete="CASCADE", max_length=64)
    chunk_id: int | None = _fk("chunk.id", nullable=True)
    line_no: int
    custom_id: str = Field(max_length=512)
    instruction: str = Field(sa_column=Column(Text, nullable=False))
    input: str = Field(default="", sa_column=Column(Text, nullable=False))
    # The chat messages of an OpenAI Batch line, used as-is for generation.
    messages: list[dict[str, Any]] | None = _json()
    params: dict[str, Any] = _json(nullable=False, default=dict)
    # The caller's own metadata of a native line, given back on its result line.
    meta: dict[str, Any] | None = Field(
        default=None, sa_column=Column("metadata", JSONType, nullable=True)
    )
    status: str = Field(default=RequestStatus.PENDING, max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # No foreign key: request and candidate would reference each other, and a key could not
    # say "a candidate of this request" anyway; the ranking stage writes it from its ranking.
    chosen_candidate_id: int | None = Field(default=None, sa_column=Column(BigId, nullable=True))
    fused_output: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    completed_at: datetime | None = _ts()


class Candidate(SQLModel, table=True):
    __tablename__ = "candidate"
    __table_args__ = (UniqueConstraint("request_id", "model", name="uq_candidate_request_model"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    # No foreign key: its per-row check cost a third of the write (migration 0012). The
    # generation worker writes rows only for requests it has just read; a trigger on
    # request deletes a request's candidates with it.
    request_id: int = Field(sa_column=Column(BigId, nullable=False))
    model: str = Field(max_length=128)
    model_revision: str = Field(default="", max_length=128)
    params: dict[str, Any] = _json(nullable=False, default=dict)
    # A failed generation is stored too, so an auditor sees why a model is missing.
    ok: bool = Field(default=True)
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    latency_ms: float = Field(default=0.0)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Comparison(SQLModel, table=True):
    __tablename__ = "comparison"
    __table_args__ = (
        UniqueConstraint("request_id", "candidate_a_id", "candidate_b_id", "ranker_revision",
                         name="uq_comparison_pair_revision"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    # Ids without foreign keys: the keys' per-row checks cost about half of the write
    # (migrations 0011, 0012). The ranking worker writes rows only for the request and
    # candidates it has just read; a trigger on request deletes a request's rows with it.
    request_id: int = Field(sa_column=Column(BigId, nullable=False))
    candidate_a_id: int = Field(sa_column=Column(BigId, nullable=False))
    candidate_b_id: int = Field(sa_column=Column(BigId, nullable=False))
    logit: float  # A over B
    ranker_revision: str = Field(max_length=128)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Ranking(SQLModel, table=True):
    __tablename__ = "ranking"
    __table_args__ = (
        UniqueConstraint("request_id", "ranker_revision", "strategy", "aggregation",
                         name="uq_ranking_request_revision_strategy"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    request_id: int = _fk("request.id", index=False)
    ranker: str = Field(max_length=128)
    ranker_revision: str = Field(max_length=128)
    strategy: str = Field(max_length=32)
    aggregation: str = Field(max_length=32)
    # Best first: [{"candidate_id", "model", "score", "rank"}].
    entries: list[dict[str, Any]] = _json(nullable=False, default=list)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Fusion(SQLModel, table=True):
    __tablename__ = "fusion"
    __table_args__ = (
        UniqueConstraint("request_id", "fuser", "fuser_revision",
                         name="uq_fusion_request_fuser_revision"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    request_id: int = _fk("request.id", index=False)
    fuser: str = Field(max_length=128)
    fuser_revision: str = Field(max_length=128)
    # The candidates the fuser read, in the order it read them.
    candidate_ids: list[int] = _json(nullable=False, default=list)
    output: str = Field(sa_column=Column(Text, nullable=False))
    params: dict[str, Any] = _json(nullable=False, default=dict)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Label(SQLModel, table=True):
    """A person's judgement, kept for retraining the ranker."""

    __tablename__ = "label"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    request_id: int = _fk("request.id")
    comparison_id: int | None = _fk("comparison.id", nullable=True, index=False)
    candidate_a_id: int | None = _fk("candidate.id", nullable=True, index=False)
    candidate_b_id: int | None = _fk("candidate.id", nullable=True, index=False)
    verdict: str = Field(max_length=32)  # "a", "b", "tie" or "ranking"
    ranking: list[int] | None = _json()
    author: str = Field(max_length=256)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class RegisteredModel(SQLModel, table=True):
    """The model registry (``manage.py models``), plus what admins change at run time
    (paused). Workers on any host read it (orchestration/registry.py)."""

    __tablename__ = "registered_model"

    name: str = Field(primary_key=True, max_length=128)
    role: str = Field(max_length=16)
    backend: str = Field(max_length=32)
    path: str = Field(max_length=1024)
    revision: str = Field(default="", max_length=128)
    queue: str = Field(max_length=160)
    params: dict[str, Any] = _json(nullable=False, default=dict)
    # The ranker / fuser a job gets when it names none (at most one per role).
    is_default: bool = Field(default=False)
    paused: bool = Field(default=False)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Outbox(SQLModel, table=True):
    """Messages written with the rows they refer to and published once those commit."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "status", "id"),
        UniqueConstraint("dedup_key", name="uq_outbox_dedup_key"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    kind: str = Field(max_length=32)
    dedup_key: str | None = Field(default=None, max_length=256)
    job_id: str | None = Field(default=None, max_length=64, index=True)
    chunk_id: int | None = Field(default=None,
                                 sa_column=Column(BigId, nullable=True, index=True))
    payload: dict[str, Any] = _json(nullable=False, default=dict)
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    # Publishes that reached the broker (the one that succeeded included); tries while it
    # was unreachable only leave their last_error.
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    published_at: datetime | None = _ts()


class Chord(SQLModel, table=True):
    """A chord's size, once its publisher knows it; its row lock serialises the parts."""

    __tablename__ = "chord"

    group_id: str = Field(primary_key=True, max_length=64)
    size: int | None = Field(default=None)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ChordPart(SQLModel, table=True):
    """One finished header task of a chord; the primary key makes a redelivery count once."""

    __tablename__ = "chord_part"

    group_id: str = Field(primary_key=True, max_length=64)
    task_id: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=16)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class Tenant(SQLModel, table=True):
    """A customer of the HTTP API; every job, file and key belongs to one."""

    __tablename__ = "tenant"

    name: str = Field(primary_key=True, max_length=128)
    # Job options a batch gets when its metadata names none (models, ranker, fuser, top_k,
    # strategy, aggregation, chunk_size).
    defaults: dict[str, Any] = _json(nullable=False, default=dict)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ApiRole(StrEnum):
    SUBMITTER = "submitter"
    AUDITOR = "auditor"
    ADMIN = "admin"


class ApiKey(SQLModel, table=True):
    """An API key. Only a hash of its secret is stored; the key is shown once at creation."""

    __tablename__ = "api_key"

    # The public part of the key ("bq_<key_id>_<secret>"), used to find the row.
    key_id: str = Field(primary_key=True, max_length=32)
    secret_hash: str = Field(max_length=128)
    tenant: str = Field(
        sa_column=Column(Text, ForeignKey("tenant.name", ondelete="CASCADE"), nullable=False,
                         index=True))
    role: str = Field(max_length=16)
    name: str = Field(default="", max_length=256)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    revoked_at: datetime | None = _ts()
    last_used_at: datetime | None = _ts()


class ApiRateBucket(SQLModel, table=True):
    """A key's request rate, shared by every API server process (db/rate_limits.py)."""

    __tablename__ = "api_rate_bucket"

    key_id: str = Field(
        sa_column=Column(String(32), ForeignKey("api_key.key_id", ondelete="CASCADE"),
                         primary_key=True))
    tokens: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class BatchFile(SQLModel, table=True):
    """A file of the Batch API: an uploaded input, or the output/error file of a job.

    Output and error files hold no content: it is rendered from the stored results when
    downloaded, so it always agrees with the audit trail.
    """

    __tablename__ = "batch_file"

    id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(max_length=128, index=True)
    purpose: str = Field(max_length=32)  # batch, batch_output, batch_error
    filename: str = Field(max_length=1024)
    size: int = Field(default=0)  # bytes
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    job_id: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class IdempotencyKey(SQLModel, table=True):
    """An ``Idempotency-Key`` header a tenant already used for a create, and what it made.

    Files and labels have no key column of their own (jobs and batches keep theirs on the
    job row); the primary key makes a second create with the same key lose the race.
    """

    __tablename__ = "api_idempotency_key"

    tenant: str = Field(primary_key=True, max_length=128)
    scope: str = Field(primary_key=True, max_length=32)  # "file" or "label"
    key: str = Field(primary_key=True, max_length=256)
    resource_id: str = Field(max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ApiSession(SQLModel, table=True):
    """A signed-in browser of the auditor pages. Its cookie holds a random token; only
    the token's hash is stored, so a copy of the table signs no one in."""

    __tablename__ = "api_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(
        sa_column=Column(String(32), ForeignKey("api_key.key_id", ondelete="CASCADE"),
                         nullable=False, index=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ApiAddressBucket(SQLModel, table=True):
    """Failed key attempts of one client address (db/rate_limits.py): a token bucket, as
    the request rate per key is."""

    __tablename__ = "api_address_bucket"

    address: str = Field(primary_key=True, max_length=64)
    tokens: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class ApiSecret(SQLModel, table=True):
    """Secrets the API server processes share, made on first use (the key that turns
    request ids into the opaque ids clients see)."""

    __tablename__ = "api_secret"

    name: str = Field(primary_key=True, max_length=32)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
