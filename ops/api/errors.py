"""Errors in the shape the OpenAI API uses, so its clients raise the right exception."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.queries_api import UnknownCursor

_TYPES = {400: "invalid_request_error", 401: "authentication_error",
          403: "permission_error", 404: "not_found_error", 409: "conflict_error",
          413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# Documented on every route, so clients (and the fuzz test) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in (
        (400, "Invalid request"), (401, "Missing or invalid API key"),
        (403, "The key's role may not do this"), (404, "Not found (or another tenant's)"),
        (409, "Conflict"), (413, "Request too large"), (429, "Rate limited"))}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    # The same answer for "absent" and "another tenant's": ids of others are not confirmed.
    return ApiError(404, f"No {what} found with id '{ident}'.", code="not_found")


def body(status: int, message: str, param: str | None = None,
         code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"),
                      "param": param, "code": code}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.status, exc.message, exc.param, exc.code),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(UnknownCursor)
    async def _unknown_cursor(_request: Request, exc: UnknownCursor) -> JSONResponse:
        return JSONResponse(body(400, str(exc), param="after", code="invalid_cursor"),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(body(exc.status_code, str(exc.detail),
                                 code=getattr(exc, "code", None)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        # A check of the whole body (text_checks.CleanBody) names its field in its message.
        said = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"{where}: {said}" if where else said
        return JSONResponse(body(400, message, param=where or None), status_code=400)
