"""The one typed settings object, read from ``BLENDQ_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/blendq"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
CHORD_BACKEND = "orchestration.chord_backend:PostgresChordBackend"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLENDQ_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    # Chords are counted in Postgres, event-driven: the database backend's chord_unlock
    # polls (first check after 1 s) and can loop forever, and a Redis counter breaks when
    # a header task runs twice; the only servers are Postgres and RabbitMQ.
    result_backend: str = CHORD_BACKEND
    chunk_size: int = Field(default=8, ge=1, le=10_000)
    # None means the built-in registry of tiny random models.
    registry_path: Path | None = None
    model_cache: Path = Path.home() / ".cache" / "blendq"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    # Seconds a worker may spend on one task. Queues are declared with a consumer timeout
    # 5 minutes above it (x-consumer-timeout); RabbitMQ before 3.11.15 ignores that and
    # applies its global consumer_timeout (30 min by default), so stay below that there.
    task_time_limit: int = Field(default=1500, ge=10)
    dispatcher_batch: int = Field(default=100, ge=1)
    # Quorum queues survive a broker node's loss and bound redeliveries (x-delivery-limit),
    # so a message that kills its worker every time ends in the dead-letter queue.
    quorum_queues: bool = False
    max_deliveries: int = Field(default=5, ge=1)
    max_task_retries: int = Field(default=5, ge=0)
    # The ranking worker ranks, with its own chunk, up to this many further chunks whose
    # rank message waits on the queue (one packed set of batches instead of several
    # half-full ones); their own messages then find the work stored. 0 turns it off.
    rank_gather_chunks: int = Field(default=8, ge=0)
    # The same for generation: a generate task takes, with its own chunk, up to this many
    # chunks of the same model waiting on its queue, as one backend call bounded by
    # gen_token_budget (prompt plus new tokens, summed over the call). 0 turns it off.
    gen_gather_chunks: int = Field(default=16, ge=0)
    gen_token_budget: int = Field(default=65_536, ge=256)
    # Liveness (README: Liveness). A worker renews the lease of each chunk it works on every
    # third of chunk_lease_seconds; a published message must start within
    # chunk_start_timeout while its queue is empty (a message can wait for ever behind
    # others or on a paused queue). The dispatcher sweeps every sweep_interval seconds and
    # re-publishes a lapsed chunk's stage at most chunk_max_sweeps times, then fails its
    # open requests so the job ends.
    chunk_lease_seconds: int = Field(default=60, ge=3)
    chunk_start_timeout: int = Field(default=300, ge=1)
    chunk_max_sweeps: int = Field(default=3, ge=0)
    sweep_interval: float = Field(default=15.0, gt=0)
    # AMQP heartbeat in seconds (0 turns it off). Workers run tasks in a thread of their
    # own (the threads pool), so the connection keeps beating while a task runs for hours.
    broker_heartbeat: int = Field(default=60, ge=0)
    # Threads torch uses in a worker process. Unset: torch's default (one per core), right
    # for one worker per machine; several CPU workers on one machine should share the cores
    # (e.g. cores / workers) instead of each taking all of them.
    torch_threads: int | None = Field(default=None, ge=1)
    # HTTP API (manage.py serve). Bodies and uploaded files larger than this are refused
    # with 413 before they are read whole; OpenAI's own batch input limit is 200 MB.
    api_max_body_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # Requests per minute one API key may make (a token bucket per key and server process).
    api_rate_limit_per_minute: int = Field(default=600, ge=1)
    # Failed key attempts per minute one client address may make before it gets 429.
    api_failed_auth_per_minute: int = Field(default=30, ge=1)
    # Operating (README: Operating). Workers send task events (Flower, celery events);
    # false turns them off. Workers and the dispatcher serve /metrics, /healthz and /readyz
    # on metrics_port (unset: no server; give each process on a host a port of its own).
    task_events: bool = True
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        if "guest:guest@" in self.broker_url:
            problems.append("BLENDQ_BROKER_URL uses the guest account")
        if self.database_url == DEFAULT_DATABASE_URL:
            problems.append("BLENDQ_DATABASE_URL is the development default")
        if self.database_url.startswith("sqlite"):
            problems.append("BLENDQ_DATABASE_URL is SQLite, which is for the embedded run only")
        if problems:
            raise ValueError("unsafe settings for production: " + "; ".join(problems))
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (the embedded run and tests change the environment)."""
    get_settings.cache_clear()
