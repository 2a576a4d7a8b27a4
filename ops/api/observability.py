"""The API's /metrics and /readyz, and what every HTTP request is tagged and counted with.

``install(app)`` adds them. /metrics sums the counters of every server process when
``serve --workers N`` runs several (Prometheus multiprocess mode, ``ops/metrics.py``) and
carries the fleet's gauges (queues, outbox, jobs, tokens, comparisons). /readyz answers
503 naming PostgreSQL or RabbitMQ when the API could not use it; /healthz (in app.py)
stays a liveness probe that needs neither, so an outage of a server does not restart the
API. Neither needs a key: they carry no tenant data (labels never hold ids).
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops import metrics
from orchestration.settings import Settings

HTTP_REQUESTS = Counter("blendq_api_requests", "HTTP requests answered, by route template "
                        "and status class.", ["method", "route", "status"])
HTTP_SECONDS = Histogram("blendq_api_request_duration_seconds", "Time to answer an HTTP "
                         "request (the headers; a streamed body may go on).",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
REQUEST_ID_HEADER = "x-request-id"
# A client's id is echoed and logged only when it looks like an id, never arbitrary text.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics_endpoint(request: Request) -> Response:
    body = metrics.exposition([request.app.state.fleet_collector])
    return Response(body, media_type=metrics.CONTENT_TYPE)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    ok, results = await run_in_threadpool(metrics.run_checks, {
        "postgresql": lambda: metrics.check_database(settings),
        "rabbitmq": lambda: metrics.check_broker(settings)})
    failed = [name for name, value in results.items() if value != "ok"]
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results,
                         "failed": failed}, status_code=200 if ok else 503)


class RequestObservation:
    """Binds an id to each request's log lines (``http_request_id``, echoed in
    X-Request-ID) and counts it by route template, so labels stay bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode(
            "latin-1")
        request_id = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        started = time.perf_counter()
        status = [500]

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (REQUEST_ID_HEADER.encode(), request_id.encode())]
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                method = scope.get("method", "")
                HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
                HTTP_REQUESTS.labels(method, route, f"{status[0] // 100}xx").inc()
            await send(message)

        with structlog.contextvars.bound_contextvars(http_request_id=request_id):
            await self.app(scope, receive, send_tagged)


def install(app: FastAPI) -> None:
    app.state.fleet_collector = metrics.FleetCollector(app.state.settings)
    app.include_router(router)
    app.add_middleware(RequestObservation)
