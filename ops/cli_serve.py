"""``manage.py serve``: the HTTP API."""

from __future__ import annotations

import click

from ops import context


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes; they share the rate limits (kept in PostgreSQL).")
@click.option("--forwarded-allow-ips", metavar="IPS",
              help="Behind a reverse proxy: trust X-Forwarded-Proto/For from these "
                   "addresses (comma-separated, or '*'), so pages served over HTTPS set "
                   "their sign-in cookie Secure. Off by default: a client could claim any.")
def serve(host: str, port: int, workers: int, forwarded_allow_ips: str | None) -> None:
    """Serve the OpenAI Batch API, the native API and the auditor pages (docs at /docs)."""
    import uvicorn

    context.settings()  # refuses invalid settings here, before any process starts
    if workers > 1:  # /metrics sums the processes' counters, which they keep in files
        from ops.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir()
    # Access logs carry method, path and status only; keys travel in headers or a
    # cookie, which are never logged.
    uvicorn.run("ops.api.app:served_app", factory=True, host=host, port=port,
                workers=workers, log_config=None, server_header=False,
                proxy_headers=forwarded_allow_ips is not None,
                forwarded_allow_ips=forwarded_allow_ips,
                # A server process must answer the parent within this or is killed and
                # started again: 5 s (uvicorn's default) is shorter than importing the app
                # on a busy machine, which then restarts its processes for ever.
                timeout_worker_healthcheck=60)
