"""The FastAPI application behind ``manage.py serve``."""

from __future__ import annotations

from fastapi import FastAPI

from ops.api import batch, errors, native, observability, pages
from ops.api.headers import SecurityHeaders
from ops.api.limits import BodySizeLimit
from ops.api.text_checks import CleanUrl
from orchestration.celery_app import configure
from orchestration.registry import get_registry
from orchestration.settings import Settings, get_settings

DESCRIPTION = """Batch jobs through an ensemble of LLMs: every model writes a candidate, a
pairwise ranker compares them, a fuser merges the best.

* `/v1/...`: the OpenAI Batch API (files and batches); point the official `openai` client at
  this server.
* `/api/v1/...`: blendq's native API (inline jobs, streamed results, audit and labels).
* `/audit/...`: pages for auditors, in the browser.

Every call needs an API key in the header `Authorization: Bearer <key>` (`manage.py keys
create`); the pages' sign-in cookie is not accepted here. Requests are named by opaque ids
(`req_…`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="blendq", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    # Submitting writes the canvas into the outbox, so the app needs Celery's signatures
    # (not a broker connection: the dispatcher publishes).
    app.state.celery = configure(settings)
    # Read once now so a registry that cannot be read stops the server at start; requests
    # read it again through deps.registry_of.
    get_registry(settings.registry_path, settings.database_url)
    errors.install(app)
    # Outermost last: the headers go on every response, refusals included.
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    app.add_middleware(CleanUrl)
    app.add_middleware(SecurityHeaders)
    app.include_router(batch.router)
    app.include_router(native.router)
    app.include_router(pages.router)
    pages.install(app)  # the pages' stylesheet and their sign-in redirects
    observability.install(app)  # /metrics, /readyz, request ids in the log

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def served_app() -> FastAPI:
    """The app of each process ``manage.py serve --workers N`` starts: settings and logging
    from the environment, as the parent read them."""
    from ops.logging import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
