"""structlog, configured once per process: JSON in production, readable in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from orchestration.settings import Settings

_done: list[bool] = []


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    if _done:
        return
    level = logging.getLevelName(settings.log_level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (Celery, kombu, alembic) log through the standard library: same stream.
    logging.basicConfig(level=level, stream=stream or sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _done.append(True)
