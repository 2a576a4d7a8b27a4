"""Server-rendered pages for auditors: the tenant's jobs, a job's requests with their winner
and margin, and one request with its candidates side by side, the pairwise logits as a heat
map, the fusion, the labels so far and a form to record one.

Signing in opens a server-side session (db/api_keys.py): the cookie holds a random token
(HttpOnly, so no script reads it; SameSite=Strict, so no other site's page sends it), its
hash is stored with an expiry, and signing out or revoking the key ends it. Only these
pages take the cookie; the API takes only the Authorization header. A POST that carries the
cookie must also name this server as its origin (Origin, else Referer): the second lock on
the door against another site making an auditor's browser record labels.

The pages use no script, and their Content-Security-Policy allows none (ops/api/headers.py):
the heat map's colours are classes of the stylesheet, not inline styles.

Every page is scoped to the key's tenant; another tenant's job or request reads as absent.
Model output is untrusted text: the templates autoescape everything they print.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlmodel import Session

from db.api_keys import close_session, open_session, session_key
from db.models import ApiRole, Job
from db.queries import job_summary
from db.queries_audit import (
    AuditError,
    Verdict,
    record_label,
    request_detail,
    resolve_candidate,
    review_queue,
)
from db.queries_pages import job_requests, tenant_job, tenant_jobs, tenant_request
from ops.api.deps import (
    DB,
    SESSION_COOKIE,
    Principal,
    admit,
    check_key,
    identify,
    presented_key,
    settings_of,
)
from ops.api.errors import ApiError
from ops.api.public_ids import RequestIds, request_ids
from ops.api.text_checks import text_problem

HERE = Path(__file__).parent
PAGE_SIZE = 50
# Far past any real list; a larger page number is refused, not turned into an OFFSET.
MAX_PAGE = 1_000_000
# A signed-in browser stays signed in for a working day at most (and until it closes:
# the cookie has no Max-Age).
SESSION_LIFETIME = timedelta(hours=12)
# Where earlier versions kept the raw key in the browser: removed wherever it is still sent.
LEGACY_COOKIE = "blendq_key"
QUEUE_SIZE = 50
NOTE_LIMIT = 10_000
AUDIT_ROLES = frozenset({ApiRole.AUDITOR.value, ApiRole.ADMIN.value})
# Diverging colours for the heat map (ColorBrewer RdBu ends): the row's candidate won the
# comparison (blue) or lost it (red); white is a coin toss.
WON = (33, 102, 172)
LOST = (178, 24, 43)
LEGEND_STEPS = 7
# Shades per side: a cell's colour is one of the stylesheet's classes (heat-won-N,
# heat-lost-N), since the policy allows no inline style.
SHADES = 10

router = APIRouter(prefix="/audit", include_in_schema=False)


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _when(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return str(value.strftime("%Y-%m-%d %H:%M:%S UTC"))


_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters["num"] = _num
_env.filters["when"] = _when
templates = Jinja2Templates(env=_env)


class _PageExit(Exception):
    """Ends a page request early with a response of its own (sign-in redirect, error)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def install(app: FastAPI) -> None:
    """What the pages need beyond their router: the stylesheet and early exits."""
    app.mount("/audit/static", StaticFiles(directory=HERE / "static"), name="audit-static")

    async def _exit(_request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, _PageExit)
        return exc.response

    app.add_exception_handler(_PageExit, _exit)


def _render(request: HttpRequest, name: str, status: int = 200,
            viewer: Principal | None = None, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, {"viewer": viewer, **context},
                                          status_code=status)
    # Pages show tenant data: no shared cache may keep them, no other site may frame them.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _error(request: HttpRequest, status: int, message: str, viewer: Principal | None = None,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    response = _render(request, "error.html", status, viewer, code=status, message=message)
    response.headers.update(headers or {})
    return response


def _login_redirect(request: HttpRequest) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        # After signing in the browser GETs `next`: send it to the page the form was on.
        here = request.url.path.removesuffix("/labels")
    response = RedirectResponse(f"/audit/login?next={quote(here, safe='')}", status_code=303)
    for name in (SESSION_COOKIE, LEGACY_COOKIE):
        if name in request.cookies:
            # An ended session (or an old key cookie): forget it, so sign-in starts clean.
            response.delete_cookie(name, path="/")
    return response


def _signed_in(request: HttpRequest, session: Session) -> Any:
    """The key of the Authorization header (programs) or of the page session (browsers)."""
    if presented_key(request) is not None:
        return identify(request, session)
    key = session_key(session, request.cookies.get(SESSION_COOKIE, ""))
    if key is None:
        raise ApiError(401, "Not signed in.")
    return admit(request, session, key)


def auditor(request: HttpRequest, session: Session = DB) -> Principal:
    """The signed-in auditor; anyone else is sent to sign in or shown 403."""
    try:
        key = _signed_in(request, session)
    except ApiError as exc:
        if exc.status == 401:
            raise _PageExit(_login_redirect(request)) from None
        raise _PageExit(_error(request, exc.status, exc.message, headers=exc.headers)) from None
    if key.role not in AUDIT_ROLES:
        raise _PageExit(_error(request, 403, f"These pages need an auditor or admin key; "
                                             f"this key is a {key.role} key."))
    return Principal(key.key_id, key.tenant, key.role, key.name)


def _same_origin(request: HttpRequest) -> bool:
    """Whether a POST comes from one of our own pages, as far as the browser tells."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    if referer is not None:
        return urlsplit(referer).netloc == host
    # Browsers send Origin on every POST; a client that sends neither header is a program,
    # and a program that carries the session cookie has no business posting without them.
    return SESSION_COOKIE not in request.cookies


def _check_origin(request: HttpRequest) -> None:
    if not _same_origin(request):
        raise _PageExit(_error(request, 403, "This form was sent from another site; "
                                             "open the page again and send it from there."))


def _safe_next(value: str | None) -> str:
    # Only our own pages: an open redirect would let a link to the sign-in page send an
    # auditor anywhere once signed in.
    if value and value.startswith("/audit/") and value.isprintable() and "\\" not in value:
        return value
    return "/audit/"


# -- signing in and out -----------------------------------------------------------------------
@router.get("/login")
def login_page(request: HttpRequest,
               next_page: str | None = Query(None, alias="next")) -> HTMLResponse:
    return _render(request, "login.html", next=_safe_next(next_page), error=None)


@router.post("/login")
def login(request: HttpRequest, key: str = Form(""),
          next_page: str | None = Form(None, alias="next"),
          session: Session = DB) -> Response:
    _check_origin(request)
    target = _safe_next(next_page)
    if not key.strip():
        return _render(request, "login.html", 401, next=target, error="Paste a key.")
    try:
        found = check_key(request, session, key)
    except ApiError as exc:
        # Counted against this address (deps.check_key): guessing keys here is no faster
        # than over the API.
        refused = _render(request, "login.html", exc.status, next=target,
                          error="That key is not valid, or it was revoked."
                          if exc.status == 401 else exc.message)
        refused.headers.update({k: v for k, v in (exc.headers or {}).items()
                                if k == "Retry-After"})
        return refused
    if found.role not in AUDIT_ROLES:
        return _render(request, "login.html", 403, next=target,
                       error=f"This is a {found.role} key; the auditor pages need an "
                             "auditor or admin key.")
    token = open_session(session, found, SESSION_LIFETIME)
    # The session exists before the browser is sent on to use it.
    session.commit()
    response = RedirectResponse(target, status_code=303)
    # No Max-Age: the browser forgets the token when it closes; the server forgets the
    # session at its expiry or at sign-out.
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        path="/", secure=request.url.scheme == "https")
    if LEGACY_COOKIE in request.cookies:
        response.delete_cookie(LEGACY_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: HttpRequest, session: Session = DB) -> Response:
    _check_origin(request)
    close_session(session, request.cookies.get(SESSION_COOKIE, ""))
    session.commit()
    response = RedirectResponse("/audit/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# -- jobs and requests ------------------------------------------------------------------------
@router.get("/")
def jobs_page(request: HttpRequest, page: int = Query(1, ge=1, le=MAX_PAGE),
              who: Principal = Depends(auditor),
              session: Session = DB) -> HTMLResponse:
    found = tenant_jobs(session, who.tenant, page, PAGE_SIZE)
    return _render(request, "jobs.html", viewer=who, page=found)


def _job_or_404(request: HttpRequest, session: Session, who: Principal, job_id: str) -> Job:
    job = tenant_job(session, who.tenant, job_id)
    if job is None:
        raise _PageExit(_error(request, 404, f"No job {job_id} in this tenant.", who))
    return job


@router.get("/jobs/{job_id}")
def job_page(request: HttpRequest, job_id: str, page: int = Query(1, ge=1, le=MAX_PAGE),
             who: Principal = Depends(auditor),
             session: Session = DB) -> HTMLResponse:
    job = _job_or_404(request, session, who, job_id)
    found = job_requests(session, job.id, page, PAGE_SIZE)
    ids = _ids(request)
    for row in found.rows:
        row["public_id"] = ids.encode(row["request"].id)
    return _render(request, "job.html", viewer=who, job=job_summary(session, job),
                   page=found)


@router.get("/jobs/{job_id}/queue")
def queue_page(request: HttpRequest, job_id: str, who: Principal = Depends(auditor),
               session: Session = DB) -> HTMLResponse:
    job = _job_or_404(request, session, who, job_id)
    ids = _ids(request)
    items = [{**item, "public_id": ids.encode(item["request_id"])}
             for item in review_queue(session, job.id, QUEUE_SIZE)]
    return _render(request, "queue.html", viewer=who, job=job_summary(session, job),
                   items=items)


def _ids(request: HttpRequest) -> RequestIds:
    return request_ids(settings_of(request).database_url)


def _candidate_id(value: str) -> bool:
    # ASCII digits only ("²".isdigit() is true too), and within BIGINT.
    return value.isascii() and value.isdigit() and len(value) <= 18


@router.get("/requests/{request_id}")
def request_page(request: HttpRequest, request_id: str,
                 recorded: int | None = Query(None, ge=1, le=2**63 - 1),
                 who: Principal = Depends(auditor),
                 session: Session = DB) -> HTMLResponse:
    return _request_view(request, session, who, request_id, recorded=recorded)


@router.post("/requests/{request_id}/labels")
def add_label(request: HttpRequest, request_id: str, first: str = Form(""),
              second: str = Form(""), verdict: str = Form(""), note: str = Form(""),
              who: Principal = Depends(auditor),
              session: Session = DB) -> Response:
    _check_origin(request)
    target = _tenant_request(request, session, who, request_id)
    if target is None:
        return _error(request, 404, f"No request {request_id} in this tenant.", who)
    form = {"first": first, "second": second, "verdict": verdict, "note": note}
    try:
        if verdict not in ("first", "second", "tie"):
            raise AuditError("choose which candidate is better, or that they are equal")
        if not _candidate_id(first) or not _candidate_id(second):
            raise AuditError("choose two candidates")
        if len(note) > NOTE_LIMIT:
            raise AuditError(f"the note is longer than {NOTE_LIMIT} characters")
        problem = text_problem(note, free_text=True)
        if problem is not None:
            raise AuditError(f"the note {problem}")
        a = resolve_candidate(session, target, first).id or 0
        b = resolve_candidate(session, target, second).id or 0
        kind, pair = ("tie", (a, b)) if verdict == "tie" else (
            ("a", (a, b)) if verdict == "first" else ("a", (b, a)))
        label = record_label(session, target, Verdict(kind, pair), who.author,
                             note.strip() or None)
    except AuditError as exc:
        session.rollback()
        message = str(exc).replace(f"request {target.id} ", "this request ")
        return _request_view(request, session, who, request_id, status=400, error=message,
                             form=form)
    # Committed before the redirect, so the page it leads to shows the label.
    session.commit()
    return RedirectResponse(f"/audit/requests/{request_id}?recorded={label.id}"
                            f"#label-{label.id}", status_code=303)


def _tenant_request(request: HttpRequest, session: Session, who: Principal,
                    public_id: str) -> Any:
    internal = _ids(request).decode(public_id)
    return None if internal is None else tenant_request(session, who.tenant, internal)


def _request_view(request: HttpRequest, session: Session, who: Principal, request_id: str, *,
                  status: int = 200, recorded: int | None = None, error: str | None = None,
                  form: dict[str, str] | None = None) -> HTMLResponse:
    target = _tenant_request(request, session, who, request_id)
    if target is None:
        return _error(request, 404, f"No request {request_id} in this tenant.", who)
    detail = request_detail(session, target)
    detail["request"]["id"] = request_id
    candidates = sorted(detail["candidates"], key=lambda c: (
        not c["ok"], c["rank"] is None, c["rank"] or 0, c["model"]))
    models = {c["candidate_id"]: c["model"] for c in detail["candidates"]}
    usable = [c for c in candidates if c["ok"]]
    fused_from = [i["candidate_id"] for i in (detail["fusion"] or {}).get("inputs", [])]
    if form is None:
        form = {"first": str(usable[0]["candidate_id"]) if usable else "",
                "second": str(usable[1]["candidate_id"]) if len(usable) > 1 else "",
                "verdict": "", "note": ""}
    return _render(request, "request.html", status, who, d=detail, candidates=candidates,
                   usable=usable, fused_from=fused_from, heat=heat_map(detail),
                   labels=[describe_label(label, models) for label in detail["labels"]],
                   recorded=recorded, error=error, form=form)


# -- the heat map -----------------------------------------------------------------------------
def cell_colour(logit: float, scale: float) -> tuple[str, str]:
    """Background and text colour of a cell: the stronger the logit, the deeper the hue."""
    strength = min(1.0, abs(logit) / scale) if scale > 0 else 0.0
    base = WON if logit >= 0 else LOST
    rgb = [round(255 + (channel - 255) * strength) for channel in base]
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})", "#fff" if strength > 0.55 else "#1a1a1a"


def cell_shade(logit: float, scale: float) -> str:
    """The stylesheet class of a cell: its side and its strength in SHADES steps."""
    strength = min(1.0, abs(logit) / scale) if scale > 0 else 0.0
    return f"heat-{'won' if logit >= 0 else 'lost'}-{round(strength * SHADES)}"


def shade_rules() -> str:
    """The CSS of every shade (kept in static/audit.css; a test checks they agree)."""
    rules = []
    for side, sign in (("won", 1.0), ("lost", -1.0)):
        for step in range(SHADES + 1):
            bg, fg = cell_colour(sign * step / SHADES, 1.0)
            rules.append(f".heat-{side}-{step} {{ background-color: {bg}; color: {fg}; }}")
    return "\n".join(rules) + "\n"


def heat_map(detail: dict[str, Any]) -> dict[str, Any]:
    """The matrix as table cells: one row per candidate, logit(row over column) in each."""
    matrix = detail["matrix"]
    values = [v for row in matrix["logits"] for v in row if v is not None]
    # One scale for the whole matrix, so equal colours mean equal logits within a request.
    scale = max((abs(v) for v in values), default=0.0)
    scores = {c["candidate_id"]: c for c in detail["candidates"]}
    rows = []
    for i, (cid, model) in enumerate(zip(matrix["candidate_ids"], matrix["models"],
                                         strict=True)):
        cells = []
        for j, value in enumerate(matrix["logits"][i]):
            if i == j:
                cells.append({"kind": "self", "value": None, "shade": ""})
            elif value is None:
                cells.append({"kind": "missing", "value": None, "shade": ""})
            else:
                cells.append({"kind": "logit", "value": value,
                              "shade": cell_shade(value, scale)})
        rows.append({"candidate_id": cid, "model": model, "cells": cells,
                     "score": scores.get(cid, {}).get("score"),
                     "rank": scores.get(cid, {}).get("rank")})
    # Enough decimals that the largest logit shows three significant digits (an untrained
    # ranker's logits are hundredths; a trained one's are units).
    digits = min(4, max(2, 2 - math.floor(math.log10(scale)))) if scale > 0 else 2
    steps = [scale * (2 * k / (LEGEND_STEPS - 1) - 1) for k in range(LEGEND_STEPS)]
    legend = [{"value": v, "shade": cell_shade(v, scale)} for v in steps] if scale > 0 else []
    return {"columns": list(zip(matrix["candidate_ids"], matrix["models"], strict=True)),
            "rows": rows, "scale": scale, "legend": legend, "digits": digits,
            "ranker_revision": matrix["ranker_revision"]}


def describe_label(label: dict[str, Any], models: dict[int, str]) -> dict[str, Any]:
    def name(cid: int | None) -> str:
        return f"{models.get(cid or 0, '?')} #{cid}"

    a, b = label["candidate_a"], label["candidate_b"]
    if label["verdict"] == "ranking":
        text = "ranked " + " > ".join(name(c) for c in label["ranking"] or [])
    elif label["verdict"] == "tie":
        text = f"{name(a)} and {name(b)} equally good"
    elif label["verdict"] == "b":
        text = f"{name(b)} better than {name(a)}"
    else:
        text = f"{name(a)} better than {name(b)}"
    return {**label, "text": text}
