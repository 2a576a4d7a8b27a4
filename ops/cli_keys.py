"""``manage.py keys``: API keys for the HTTP API (stored as hashes, shown once)."""

from __future__ import annotations

import json

import click

from db.api_keys import ApiKeyError, create_key, list_keys, revoke_key
from db.engine import session_scope
from db.models import ApiRole
from ops import context

ROLES = [r.value for r in ApiRole]


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (roles: submitter, auditor, admin)."""


@keys.command()
@click.option("--tenant", required=True, help="The tenant whose jobs the key may see "
              "(created if new).")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", default="", help="Who or what holds the key (for `keys list`).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(tenant: str, role: str, name: str, as_json: bool) -> None:
    """Create a key and print it: it is shown only this once, only its hash is kept."""
    settings = context.settings()
    try:
        with session_scope(settings.database_url) as session:
            created = create_key(session, tenant, role, name)
    except ApiKeyError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"key_id": created.key_id, "tenant": created.tenant,
                               "role": created.role, "key": created.secret}))
        return
    click.echo(f"key {created.key_id} ({created.role} of tenant {created.tenant}):")
    click.echo(created.secret)
    click.echo("Store it now: blendq keeps only its hash and cannot show it again.", err=True)


@keys.command(name="list")
@click.option("--tenant", help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(tenant: str | None, as_json: bool) -> None:
    """Keys with their tenant, role and state (never their secret)."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        rows = [{"key_id": k.key_id, "tenant": k.tenant, "role": k.role, "name": k.name,
                 "created_at": k.created_at.isoformat(),
                 "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                for k in list_keys(session, tenant)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        click.echo(f"{row['key_id']}  {row['tenant']:<20} {row['role']:<9} {state:<7} "
                   f"last used {row['last_used_at'] or 'never'}  {row['name']}")


@keys.command()
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key: every later request with it gets 401, and the auditor pages it
    signed in to are signed out."""
    settings = context.settings()
    try:
        with session_scope(settings.database_url) as session:
            revoke_key(session, key_id)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"key {key_id} revoked")
