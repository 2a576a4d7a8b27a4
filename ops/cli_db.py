"""``manage.py db``: the schema, through Alembic."""

from __future__ import annotations

import click

from ops import context, dbadmin


@click.group()
def db() -> None:
    """Database schema (upgrade, current, check) and pruning of bookkeeping rows."""


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


@db.command()
@click.option("--older-than", "days", type=click.IntRange(min=2), default=7, show_default=True,
              help="Days; at least 2, so no running job (24 h window) loses a row it needs.")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
def prune(days: int, dry_run: bool) -> None:
    """Delete chord counters and sent or dropped outbox rows older than --older-than days,
    and expired sessions of the auditor pages.

    The audit trail (candidates, comparisons, rankings, fusions, labels) is never pruned.
    Run it from cron, e.g. daily.
    """
    from datetime import timedelta

    from db.engine import session_scope
    from db.models import utcnow
    from db.retention import prune as prune_rows

    settings = context.settings()
    with session_scope(settings.database_url) as session:
        done = prune_rows(session, utcnow() - timedelta(days=days), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {done.chords} chords, {done.chord_parts} chord parts, "
               f"{done.outbox} outbox rows older than {days} days, {done.sessions} expired "
               "page sessions")
