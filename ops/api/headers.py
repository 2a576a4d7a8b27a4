"""Security headers on every response.

The pages use no script, so their policy allows none: styles from this server only, forms
posted to this server only, no framing, no plugins, no base-URL tricks. The API's JSON gets
the tightest policy (nothing may load); the interactive docs at /docs and /redoc load
Swagger UI from its CDN and keep the browser's defaults.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGES_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'")
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
DOCS = ("/docs", "/redoc")
COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Behind TLS (seen directly or through a trusted proxy): browsers keep to https for a year.
HSTS = "max-age=31536000"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
                if path.startswith("/audit"):
                    headers.setdefault("Content-Security-Policy", PAGES_POLICY)
                elif not path.startswith(DOCS):
                    headers.setdefault("Content-Security-Policy", API_POLICY)
                if path.startswith(("/v1", "/api")):
                    # Tenant data: no shared cache keeps it.
                    headers.setdefault("Cache-Control", "no-store")
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, with_headers)
