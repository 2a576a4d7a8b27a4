"""``manage.py tenants``: the HTTP API's tenants and the job options their batches and
jobs get when a request names none."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import func
from sqlmodel import col, select

from db.api_keys import TENANT_NAME
from db.engine import session_scope
from db.models import ApiKey, Tenant
from ops import context
from ops.api.options import OptionError, checked_defaults
from orchestration.submission import AGGREGATIONS, STRATEGIES


@click.group()
def tenants() -> None:
    """List tenants and set their default job options."""


@tenants.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(as_json: bool) -> None:
    """Tenants with their defaults and how many live keys they have."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        live = dict(session.exec(
            select(ApiKey.tenant, func.count()).where(col(ApiKey.revoked_at).is_(None))
            .group_by(col(ApiKey.tenant))).all())
        rows = [{"name": t.name, "defaults": t.defaults, "live_keys": int(live.get(t.name, 0)),
                 "created_at": t.created_at.isoformat()}
                for t in session.exec(select(Tenant).order_by(col(Tenant.name))).all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        defaults = json.dumps(row["defaults"]) if row["defaults"] else "(registry defaults)"
        click.echo(f"{row['name']:<24} keys {row['live_keys']:<3} {defaults}")


@tenants.command(name="set-defaults")
@click.argument("name")
@click.option("--models", help="Comma-separated generators.")
@click.option("--ranker")
@click.option("--fuser", help="A fuser, or 'none' to keep the top-ranked candidate.")
@click.option("--top-k", type=int, help="At most this many candidates are fused.")
@click.option("--strategy", type=click.Choice(STRATEGIES))
@click.option("--aggregation", type=click.Choice(AGGREGATIONS))
@click.option("--chunk-size", type=int)
@click.option("--clear", is_flag=True, help="Forget the tenant's defaults first.")
def set_defaults(name: str, clear: bool, **given: Any) -> None:
    """Set NAME's defaults (the tenant is created if new); options not given are kept.

    A request's own options (batch metadata ``blendq.*``, a job's ``options``) win over
    these, and these over the registry's defaults.
    """
    if not TENANT_NAME.match(name):
        raise click.UsageError(f"tenant {name!r}: use letters, digits, '.', '_' or '-'")
    settings = context.settings()
    registry = context.registry(settings)
    with session_scope(settings.database_url) as session:
        tenant = session.get(Tenant, name) or Tenant(name=name)
        values = {} if clear else dict(tenant.defaults or {})
        values.update({k: v for k, v in given.items() if v is not None})
        try:
            tenant.defaults = checked_defaults(values, registry)
        except OptionError as exc:
            raise click.UsageError(f"--{exc.param.replace('_', '-')}: {exc.message}") from exc
        session.add(tenant)
    click.echo(f"{name}: {json.dumps(tenant.defaults) if tenant.defaults else '(none)'}")
