"""The migrations and the models agree, and ``db check`` notices when they do not."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from ops import dbadmin
from tests.conftest import ADMIN_URL, fresh_database


def test_check_passes_on_a_migrated_database(pg_url: str) -> None:
    assert dbadmin.current(pg_url) == dbadmin.head()
    assert dbadmin.check(pg_url) == []


def test_check_reports_a_schema_that_drifted() -> None:
    with fresh_database("_drift") as url:
        plain = make_url(url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("ALTER TABLE job DROP CONSTRAINT uq_job_tenant_idempotency_key")
            conn.execute("ALTER TABLE candidate ADD COLUMN stray integer")
        problems = dbadmin.check(url)
        assert any("uq_job_tenant_idempotency_key" in p for p in problems)
        assert any("stray" in p for p in problems)


def test_check_reports_an_unmigrated_database(pg_url: str) -> None:
    empty = make_url(pg_url).set(database=make_url(pg_url).database + "_empty")
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{empty.database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{empty.database}"')
    try:
        problems = dbadmin.check(empty.render_as_string(hide_password=False))
        assert problems[0].startswith("database is at revision None")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{empty.database}" WITH (FORCE)')
