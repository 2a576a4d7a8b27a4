"""``manage.py db``: the schema, through Alembic."""

from __future__ import annotations

import click

from ops import context, dbadmin


@click.group()
def db() -> None:
    """Database schema: upgrade, current, check."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    dbadmin.upgrade(context.settings().database_url, revision)
    click.echo(f"database at {dbadmin.current(context.settings().database_url)}")


@db.command()
def current() -> None:
    """Print the database's revision and the migrations' head."""
    url = context.settings().database_url
    click.echo(f"current: {dbadmin.current(url)}\nhead:    {dbadmin.head()}")


@db.command()
def check() -> None:
    """Fail when the models and the migrated schema disagree."""
    problems = dbadmin.check(context.settings().database_url)
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise click.ClickException(f"{len(problems)} difference(s) between models and schema")
    click.echo("models and migrations agree")
