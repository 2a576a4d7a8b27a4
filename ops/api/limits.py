"""Limits that protect the server: request body size, and the Retry-After of the rate
limit per key (counted in PostgreSQL: db/rate_limits.py)."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops.api.errors import body


class BodyTooLarge(HTTPException):
    """A streamed body passed the limit. An HTTPException, so that FastAPI's body parsing
    passes it on (it answers any other exception while reading a form with a 400)."""

    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than {limit} bytes.")


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413: at once when Content-Length says so,
    otherwise as soon as the streamed body passes the limit (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps(body(413, f"Request body is larger than {self.limit} bytes.",
                                  code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def retry_after(seconds: float) -> dict[str, Any]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}
