"""Schema administration through Alembic: the only way the schema changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str, stdout: TextIO | None = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an INI parser: a literal % must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check(database_url: str) -> list[str]:
    """Differences between the models and the migrated schema; empty when they agree."""
    from alembic.autogenerate import compare_metadata
    from sqlmodel import SQLModel

    import db.models  # noqa: F401

    engine = create_engine(database_url, poolclass=pool.NullPool)
    problems: list[str] = []
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        rev = context.get_current_revision()
        if rev != head():
            problems.append(f"database is at revision {rev}, migrations head is {head()}")
        problems.extend(_describe(diff) for diff in compare_metadata(context, SQLModel.metadata))
    return problems


def _describe(diff: Any) -> str:
    """One readable line per difference Alembic found."""
    if isinstance(diff, list):  # column modifications come grouped
        return "; ".join(_describe(d) for d in diff)
    op, *rest = diff
    names = []
    for item in rest:
        table = getattr(item, "table", None)
        name = getattr(item, "name", None)
        if name is not None:
            names.append(f"{table.name}.{name}" if table is not None else str(name))
        elif isinstance(item, str):
            names.append(item)
    return f"{op}: {', '.join(names) or rest!r}"


def revision(database_url: str, message: str) -> None:
    command.revision(alembic_config(database_url), message=message, autogenerate=True)
