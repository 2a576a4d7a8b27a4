"""Input the database cannot store, refused at the edge with the field it came in.

PostgreSQL refuses NUL in text and JSONB, lone surrogates (``"\\ud800"`` in JSON) are not
UTF-8, and JSONB has no NaN or Infinity: each of these, let through, became a 500 when the
row was written. Other control characters are refused too, where no one means them: in a
URL always, in names and metadata always, in free text (notes) except tab and newlines.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from ops.api.errors import body

FREE_TEXT_CONTROLS = frozenset("\t\n\r")


class BadText(ValueError):
    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


def text_problem(value: str, *, free_text: bool = False) -> str | None:
    """Why ``value`` cannot be taken, or None."""
    for position, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            if free_text and char in FREE_TEXT_CONTROLS:
                continue
            return f"contains the control character U+{code:04X} at position {position}"
        if 0xD800 <= code < 0xE000:
            return (f"contains a lone surrogate (U+{code:04X}) at position {position}, "
                    "which is not Unicode text")
    return None


def check_text(value: str, where: str, *, free_text: bool = False) -> str:
    problem = text_problem(value, free_text=free_text)
    if problem is not None:
        raise BadText(where, problem)
    return value


def check_json(value: Any, where: str) -> Any:
    """Walk a JSON value: every key and string clean, every number finite."""
    if isinstance(value, str):
        check_text(value, where, free_text=True)
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        pass
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadText(where, f"{value} is not a JSON number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), f"{where}.{_printable(key)}" if where else _printable(key))
            check_json(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
    return value


class CleanBody(BaseModel):
    """A JSON body whose strings and numbers are checked (check_json) before its fields."""

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        try:
            return check_json(data, "")
        except BadText as exc:
            # Raised as a ValueError, it becomes the 400 of a validation error naming the
            # field (errors.py).
            raise ValueError(str(exc)) from None


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _printable(key: Any) -> str:
    return json.dumps(str(key))[1:-1]  # escaped, so the message itself stays printable


class CleanUrl:
    """Refuse a path or query string holding a control character (``%00`` …) with 400
    before any route turns it into a database key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _url_problem(scope)
            if problem is not None:
                await _refuse(send, problem)
                return
        await self.app(scope, receive, send)


def _url_problem(scope: Scope) -> str | None:
    path_problem = text_problem(scope.get("path", ""))
    if path_problem is not None:
        return f"The URL path {path_problem}."
    query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
    try:
        decoded = query.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"The query string is not UTF-8 at byte {exc.start}."
    query_problem = text_problem(decoded)
    if query_problem is not None:
        return f"The query string {query_problem}."
    return None


async def _refuse(send: Send, message: str) -> None:
    payload = json.dumps(body(400, message, code="invalid_characters")).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
