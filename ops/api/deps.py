"""What every route depends on: a database session per request and the caller's key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Depends, Request
from sqlmodel import Session

from db.api_keys import authenticate
from db.engine import get_engine, session_scope
from db.models import ApiKey, ApiRole, utcnow
from db.rate_limits import address_wait, charge_failure, take
from ops.api.errors import ApiError
from ops.api.limits import retry_after
from orchestration.registry import Registry, get_registry
from orchestration.settings import Settings

# The auditor pages' sign-in: the cookie holds a session token (db/api_keys.py), never a
# key. The /v1 and /api routes ignore it: they take only the Authorization header, so no
# other site can make a signed-in browser call them.
SESSION_COOKIE = "blendq_session"
# last_used_at is for admins spotting dead keys: once a minute is precise enough and
# spares a write per request.
TOUCH_EVERY = timedelta(minutes=1)
MAX_ADDRESS = 64


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    role: str
    name: str = ""  # who holds the key, as `keys create --name` recorded it

    @property
    def author(self) -> str:
        """How labels made with this key name their author."""
        return f"{self.name[:200]} (key {self.key_id})" if self.name else f"key {self.key_id}"


def settings_of(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


def registry_of(request: Request) -> Registry:
    """The model registry as workers see it: re-read from the database every few seconds
    (``get_registry``), so a model registered while the API runs can be submitted to."""
    settings = settings_of(request)
    return get_registry(settings.registry_path, settings.database_url)


def db_session(request: Request) -> Iterator[Session]:
    with session_scope(settings_of(request).database_url) as session:
        yield session


# The session as routes should take it: committed when the route returns and before the
# response is sent (FastAPI's default scope commits after), so a client that reads right
# after a create sees it, and a failed commit is a 500 rather than a lost write.
DB = Depends(db_session, scope="function")


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def client_address(request: Request) -> str:
    # Behind a proxy uvicorn puts the forwarded address here (serve --forwarded-allow-ips).
    return (request.client.host if request.client else "unknown")[:MAX_ADDRESS]


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def identify(request: Request, session: Session) -> ApiKey:
    """The caller's live key from the Authorization header, or 401."""
    raw = presented_key(request)
    if raw is None:
        raise _unauthorized("Missing API key: send the header 'Authorization: Bearer <key>'.",
                            "missing_api_key")
    return admit(request, session, check_key(request, session, raw))


def check_key(request: Request, session: Session, raw: str) -> ApiKey:
    """The live key ``raw`` is, or 401. A failed attempt counts against the client's
    address; an address past its limit gets 429 before any key is checked, so guessing
    goes no faster than the limit whatever the guesses are."""
    settings = settings_of(request)
    engine = get_engine(settings.database_url)
    address = client_address(request)
    per_minute = settings.api_failed_auth_per_minute
    blocked = address_wait(engine, address, per_minute)
    if blocked > 0:
        raise ApiError(429, "Too many failed key attempts from this address; retry later.",
                       code="rate_limit_exceeded", headers=retry_after(blocked))
    key = authenticate(session, raw)
    if key is None:
        charge_failure(engine, address, per_minute)
        raise _unauthorized("Invalid or revoked API key.", "invalid_api_key")
    return key


def admit(request: Request, session: Session, key: ApiKey) -> ApiKey:
    """Count the request against the key's rate (429 past it) and note the key's use."""
    settings = settings_of(request)
    wait = take(get_engine(settings.database_url), key.key_id,
                settings.api_rate_limit_per_minute)
    if wait > 0:
        raise ApiError(429, "Rate limit reached for this API key; retry later.",
                       code="rate_limit_exceeded", headers=retry_after(wait))
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > TOUCH_EVERY:
        key.last_used_at = now
        session.add(key)
    request.state.key_id = key.key_id
    return key


def require(*roles: ApiRole) -> Callable[..., Principal]:
    """A dependency that admits keys of ``roles`` (an admin key is admitted everywhere)."""
    allowed = {r.value for r in roles} | {ApiRole.ADMIN.value}
    wanted = " or ".join(sorted(allowed))

    def dependency(request: Request, session: Session = DB) -> Principal:
        key = identify(request, session)
        if key.role not in allowed:
            raise ApiError(403, f"This needs a key with the role {wanted}; this key is a "
                                f"{key.role} key.", code="forbidden")
        return Principal(key.key_id, key.tenant, key.role, key.name)

    return dependency
