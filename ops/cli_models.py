"""``manage.py models``: the model registry."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ops import context


@click.group()
def models() -> None:
    """The model registry (BLENDQ_REGISTRY_PATH, or the built-in tiny models)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """List generators, rankers and fusers with how they load."""
    registry = context.registry(context.settings())
    entries = sorted(registry.entries.values(), key=lambda e: (e.role, e.name))
    if as_json:
        click.echo(json.dumps([{**e.__dict__, "queue": e.queue} for e in entries], indent=2))
        return
    table = Table(title=f"models ({registry.source})")
    for column in ("name", "role", "backend", "path", "revision", "queue", "default", "params"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.name, e.role, e.backend, e.path, e.revision or "-", e.queue,
                      "yes" if e.default else "", json.dumps(e.params))
    Console().print(table)


@models.command("install-demo")
def install_demo_cmd() -> None:
    """Build the demo models (SmolLM2, MiniLM ranker) and write their registry.

    The first run converts SmolLM2 and trains the MiniLM ranker on generated data (a few
    minutes on a CPU); later runs reuse them. Progress goes to stderr: stdout carries only
    the registry's path, which scripts capture."""
    from workers.demo_models import DemoUnavailable, install_demo

    settings = context.settings()
    try:
        registry = install_demo(settings.model_cache,
                                log=lambda message: click.echo(message, err=True))
    except DemoUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(registry))
    click.echo(f"use it with: export BLENDQ_REGISTRY_PATH={registry}", err=True)
