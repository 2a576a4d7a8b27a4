"""``manage.py models``: the model registry.

The registry lives in PostgreSQL (``registered_model``), so a worker on any host finds it
through BLENDQ_DATABASE_URL. A TOML file is an import format (``models import``), or with
BLENDQ_REGISTRY_PATH one process's own registry (orchestration/registry.py).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlmodel import Session

from db.engine import session_scope
from db.queries_registry import (
    has_registry_table,
    open_jobs_using,
    registered_models,
    remove_model,
    upsert_model,
)
from ops import context
from ops.tables import print_table
from orchestration.registry import (
    BACKENDS,
    ROLES,
    ModelEntry,
    RegistryError,
    database_source,
    entry_row,
    forget_cached,
    load_registry,
    parse_entry,
    registry_from_rows,
)
from orchestration.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def models() -> None:
    """The model registry, stored in the database (register, import, remove); a process
    with BLENDQ_REGISTRY_PATH reads that file instead; an empty registry means the
    built-in tiny models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """List generators, rankers and fusers with how they load (the registry this host's
    workers would use, and where it comes from)."""
    registry = context.registry(context.settings())
    entries = sorted(registry.entries.values(), key=lambda e: (e.role, e.name))
    if as_json:
        click.echo(json.dumps([{**e.__dict__, "queue": e.queue} for e in entries], indent=2))
        return
    # ops/tables: never cut at 80 columns when piped to a file.
    print_table(f"models ({registry.source})",
                ("name", "role", "backend", "path", "revision", "queue", "default", "params"),
                [(e.name, e.role, e.backend, e.path, e.revision or "-", e.queue,
                  "yes" if e.default else "-", json.dumps(e.params)) for e in entries])


@models.command("install-demo")
def install_demo_cmd() -> None:
    """Build the demo models (SmolLM2, MiniLM ranker) and write their registry.

    The first run converts SmolLM2 and trains the MiniLM ranker on generated data (a few
    minutes on a CPU); later runs reuse them. Progress goes to stderr: stdout carries only
    the registry's path, which scripts capture."""
    from ops.demo.models import DemoUnavailable, install_demo

    settings = context.settings()
    try:
        registry = install_demo(settings.model_cache,
                                log=lambda message: click.echo(message, err=True))
    except DemoUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(registry))
    click.echo(f"use it with: export BLENDQ_REGISTRY_PATH={registry}", err=True)


def _param(values: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as a TOML value (24, 0.7, true, "text"), else kept
    as plain text."""
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            params[key.strip()] = raw
    return params


def _check_whole(session: Session, database_url: str) -> None:
    """The stored registry as a whole must still load (e.g. one default per role),
    checked inside the transaction that changed it, so a bad change is rolled back."""
    try:
        registry_from_rows(registered_models(session), database_source(database_url))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


def _note_override(settings_path: Path | None) -> None:
    if settings_path is not None:
        click.echo(f"note: this shell sets BLENDQ_REGISTRY_PATH={settings_path}; processes "
                   "started with it read that file, not the database", err=True)


@models.command("register")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--backend", required=True,
              help="generator: " + ", ".join(BACKENDS["generator"]) + "; ranker: "
                   + ", ".join(BACKENDS["ranker"]) + "; fuser: "
                   + ", ".join(BACKENDS["fuser"]) + ".")
@click.option("--path", "model_path", required=True,
              help="Weights directory as it is on the worker hosts, builtin:NAME for a "
                   "tiny model, a hub id, or the openai backend's base URL.")
@click.option("--revision", default="", help="Default: derived from the weights.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Decoding or fusion parameter, repeatable (max_new_tokens=64).")
@click.option("--default", "is_default", is_flag=True,
              help="The ranker / fuser a job gets when it names none.")
@click.option("--replace", is_flag=True, help="Overwrite an entry of that name.")
def register(name: str, role: str, backend: str, model_path: str, revision: str,
             params: tuple[str, ...], is_default: bool, replace: bool) -> None:
    """Add NAME to the registry in the database (every host sees it within seconds)."""
    settings = context.settings()
    raw = {"name": name, "role": role, "backend": backend, "path": model_path,
           "revision": revision, "default": is_default, "params": _param(params)}
    try:
        entry = parse_entry(raw, f"model {name!r}")
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    store_entry(settings, entry, replace)


def register_options(role: str) -> Callable[[F], F]:
    """``--register NAME``, ``--default`` and ``--replace`` of a training command."""
    def add(fn: F) -> F:
        for option in reversed([
            click.option("--register", "register_as", metavar="NAME",
                         help=f"Register the new revision as {role} NAME in the database "
                              f"registry (same backend and params as the {role} trained "
                              "from)."),
            click.option("--default", "is_default", is_flag=True,
                         help=f"With --register: make it the default {role}."),
            click.option("--replace", is_flag=True,
                         help="With --register: overwrite an entry of that name."),
        ]):
            fn = option(fn)
        return fn
    return add


def check_register_flags(register_as: str | None, is_default: bool, replace: bool) -> None:
    if (is_default or replace) and not register_as:
        raise click.UsageError("--default and --replace go with --register")


def check_registrable(settings: Settings, name: str, replace: bool,
                      fields: dict[str, Any]) -> None:
    """``--register NAME`` of a training command, refused before training rather than
    after: a bad entry (``fields`` without the name), a name already taken, and a database
    that holds no entries (registering one model there would leave a registry of that
    one model, and every process would lose the built-in models it runs on now)."""
    try:
        parse_entry({"name": name, **fields}, f"--register {name}")
    except RegistryError as exc:
        raise click.UsageError(str(exc)) from exc
    with session_scope(settings.database_url) as session:
        names = {r.name for r in registered_models(session)} \
            if has_registry_table(session) else set()
    if not names:
        raise click.ClickException(
            "the database registry is empty (processes run the built-in models): "
            "`models import FILE` your registry first, or train without --register")
    if name in names and not replace:
        raise click.ClickException(f"model {name!r} is already registered (--replace "
                                   "overwrites it)")


def register_trained(settings: Settings, name: str, fields: dict[str, Any], revision: str,
                     is_default: bool, replace: bool) -> None:
    """Register what a training command wrote: ``fields`` as checked before it trained."""
    store_entry(settings, parse_entry({"name": name, "default": is_default,
                                       "revision": revision, **fields},
                                      f"--register {name}"), replace)


def store_entry(settings: Settings, entry: ModelEntry, replace: bool) -> None:
    """Register ``entry`` in the database and say so (``models register``, and ``fuser
    train --register`` or ``ranker train --register`` for the revision it trained)."""
    with session_scope(settings.database_url) as session:
        existing = {r.name: r.role for r in registered_models(session)}
        if entry.name in existing and not replace:
            raise click.ClickException(f"model {entry.name!r} is already registered "
                                       "(--replace overwrites it)")
        created = upsert_model(session, entry_row(entry))
        _check_whole(session, settings.database_url)
    roles = {role for name, role in existing.items() if name != entry.name} | {entry.role}
    forget_cached()
    click.echo(f"{'registered' if created else 'replaced'} {entry.role} {entry.name} "
               f"(queue {entry.queue})")
    missing = [role for role in ROLES if role not in roles]
    if not existing and missing:
        # The first entry replaces the whole built-in registry for every process.
        click.echo(f"note: the database registry was empty, so processes ran the built-in "
                   f"models; they now read this registry, which has no {' and no '.join(missing)} "
                   "yet: register one of each (or `models import FILE`) before submitting jobs",
                   err=True)
    _note_override(settings.registry_path)


@models.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Remove it even though jobs not yet ended use it (their remaining "
                   "tasks then fail with 'unknown model').")
def remove(name: str, force: bool) -> None:
    """Remove NAME from the registry in the database (its pause flag goes with it)."""
    settings = context.settings()
    with session_scope(settings.database_url) as session:
        users = open_jobs_using(session, name)
        if users and not force:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5
                                            else "")
            raise click.ClickException(f"model {name!r} is used by jobs not yet ended: "
                                       f"{shown} (--force removes it anyway)")
        if not remove_model(session, name):
            raise click.ClickException(f"model {name!r} is not registered in "
                                       f"{database_source(settings.database_url)}")
    forget_cached()
    click.echo(f"removed {name}")


@models.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prune", is_flag=True,
              help="Also remove stored entries the file does not name (refused while jobs "
                   "not yet ended use one).")
def import_file(file: Path, prune: bool) -> None:
    """Register every entry of a registry FILE (TOML, the BLENDQ_REGISTRY_PATH format),
    replacing stored entries of the same names. Relative paths are resolved against the
    file's folder here: they must name the same place on the worker hosts."""
    settings = context.settings()
    try:
        registry = load_registry(file)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    with session_scope(settings.database_url) as session:
        stored = {r.name: r for r in registered_models(session)}
        for entry in registry.entries.values():
            previous = stored.get(entry.name)
            upsert_model(session, entry_row(entry, previous.paused if previous else False))
        pruned = sorted(set(stored) - set(registry.entries)) if prune else []
        for name in pruned:
            users = open_jobs_using(session, name)
            if users:
                raise click.ClickException(f"not pruning {name!r}: jobs not yet ended use "
                                           f"it ({', '.join(users[:5])}); nothing imported")
            remove_model(session, name)
        _check_whole(session, settings.database_url)
    forget_cached()
    new = len(set(registry.entries) - set(stored))
    click.echo(f"imported {len(registry.entries)} entries from {file} ({new} new, "
               f"{len(registry.entries) - new} replaced, {len(pruned)} pruned)")
    _note_override(settings.registry_path)
