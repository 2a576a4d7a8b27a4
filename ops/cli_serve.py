"""``manage.py serve``: the HTTP API."""

from __future__ import annotations

import click

from ops import context


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Serve the OpenAI Batch API, the native API and the auditor pages (docs at /docs)."""
    import uvicorn

    from ops.api.app import create_app

    settings = context.settings()
    # Access logs carry method, path and status only; keys travel in headers or a
    # cookie, which are never logged.
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None,
                proxy_headers=False, server_header=False)
