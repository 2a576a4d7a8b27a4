"""What every command sets up first: settings, logging, the Celery app."""

from __future__ import annotations

import click
from celery import Celery
from pydantic import ValidationError

from ops.logging import configure_logging
from orchestration.celery_app import configure
from orchestration.registry import Registry, RegistryError, get_registry
from orchestration.settings import Settings, get_settings


def settings() -> Settings:
    try:
        value = get_settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid BLENDQ_* settings: {exc}") from exc
    configure_logging(value)
    return value


def app(value: Settings, *, eager: bool = False) -> Celery:
    return configure(value, eager=eager)


def registry(value: Settings) -> Registry:
    try:
        return get_registry(value.registry_path, value.database_url)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
