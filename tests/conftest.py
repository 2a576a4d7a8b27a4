"""Shared fixtures: a real PostgreSQL database migrated once per run, a session per test
that rolls back, and settings that point at them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlmodel import Session

from orchestration.settings import Settings

if TYPE_CHECKING:
    from ops.bench.stack import Stack

# Commands run in-process (click's CliRunner) read their settings from the environment: as
# "test", the logging they configure leaves structlog's loggers uncached, so a later test
# that captures logs sees the events whatever ran before it.
os.environ.setdefault("BLENDQ_ENV", "test")

ADMIN_URL = os.environ.get("BLENDQ_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("BLENDQ_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
MODEL_CACHE = Path(os.environ.get("BLENDQ_TEST_MODEL_CACHE",
                                  Path.home() / ".cache" / "blendq-test"))


# What the run keeps until it ends: the manage server, the migrated template database.
_run_resources = ExitStack()
_manage_runs: list[object] = []
_templates: list[str] = []


def manage_runner(args: Sequence[str], cwd: Path, env: dict[str, str],
                  timeout: float) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` as ``Stack.manage`` runs it in the tests: forked from one
    process of this run that has imported the command line (tests/manage_server.py), so a
    command costs its own work and not 1.5 s of imports. Started on first use."""
    from tests.manage_server import ManageServer, manage_server

    if not _manage_runs:
        _manage_runs.append(_run_resources.enter_context(manage_server(cwd)))
    server = _manage_runs[0]
    assert isinstance(server, ManageServer)
    return server.run(args, cwd, env, timeout)


def pytest_sessionfinish() -> None:
    _run_resources.close()


def _migrated_template() -> str:
    """A database migrated once for the run, with the same command admins use; each fresh
    database is a copy of it (CREATE DATABASE … TEMPLATE), not a migration of its own."""
    from ops.bench.stack import fresh_database as migrated

    if not _templates:
        try:
            psycopg.connect(ADMIN_URL, autocommit=True).close()
        except psycopg.OperationalError as exc:  # pragma: no cover - a broken machine
            pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}. Run .ci/run or "
                        "ops/scripts/services.sh first.")
        name = f"blendq_test_{os.getpid()}_template"
        _run_resources.enter_context(migrated(name, ADMIN_URL))
        _templates.append(name)
    return _templates[0]


@contextmanager
def fresh_database(suffix: str = "") -> Iterator[str]:
    """A new database, migrated (a copy of the run's migrated template), dropped
    afterwards."""
    from db.engine import dispose_engines

    template = _migrated_template()
    name = f"blendq_test_{os.getpid()}{suffix}"
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """This run's database for tests that work in-process."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """This run's RabbitMQ vhost for tests that publish in-process: runs side by side (the
    suite's pytest-xdist workers) never see each other's messages or queues."""
    from ops.bench.stack import private_vhost

    with private_vhost("blendq-unit", BROKER_URL) as url:
        yield url


@pytest.fixture(scope="session")
def settings(pg_url: str, broker_url: str) -> Settings:
    return Settings(env="test", database_url=pg_url, broker_url=broker_url,
                    model_cache=MODEL_CACHE, chunk_size=8)


@pytest.fixture
def session(pg_url: str) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    engine = create_engine(pg_url)
    connection = engine.connect()
    transaction = connection.begin()
    db_session = Session(bind=connection, join_transaction_mode="create_savepoint",
                         expire_on_commit=False)
    try:
        yield db_session
    finally:
        db_session.close()
        transaction.rollback()
        connection.close()
        engine.dispose()


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One running stack (its own database and vhost, the built-in tiny models) for the
    whole run: the fault tests that kill its processes start them again with the same
    commands, and the integration tests that need no settings of their own share it."""
    from tests.integration.conftest import running_stack

    with running_stack(settings, "stack", tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="session")
def celery_app(settings: Settings) -> Celery:
    from orchestration.celery_app import configure

    return configure(settings)
