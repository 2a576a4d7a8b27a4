"""API keys: created and revoked by admins, checked on every HTTP request.

A key reads ``bq_<key_id>_<secret>``. Only a SHA-256 hash of the secret is stored: the
secret is 256 random bits, so a fast hash is enough (a slow password hash protects
guessable secrets, which these are not) and the check costs microseconds per request.

The auditor pages sign a browser in to a session instead of keeping the key in a cookie:
the cookie holds a random token, stored hashed with an expiry, ended at sign-out and when
its key is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, col, delete, select

from db.models import ApiKey, ApiRole, ApiSession, Tenant, utcnow

PREFIX = "bq"
_SHAPE = re.compile(r"^bq_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown tenant name, role or key)."""


@dataclass(frozen=True)
class Created:
    key_id: str
    tenant: str
    role: str
    secret: str  # the whole key; shown once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, tenant: str, role: str, name: str = "") -> Created:
    if not TENANT_NAME.match(tenant):
        raise ApiKeyError(f"tenant {tenant!r}: use letters, digits, '.', '_' or '-' "
                        "(at most 128, starting with a letter or digit)")
    if role not in {r.value for r in ApiRole}:
        raise ApiKeyError(f"role {role!r}: must be one of {', '.join(r.value for r in ApiRole)}")
    if session.get(Tenant, tenant) is None:
        session.add(Tenant(name=tenant))
        session.flush()
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    session.add(ApiKey(key_id=key_id, secret_hash=hash_secret(secret), tenant=tenant,
                       role=role, name=name))
    session.flush()
    return Created(key_id, tenant, role, f"{PREFIX}_{key_id}_{secret}")


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ApiKeyError(f"no API key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    # Its browsers are signed out at once (the session check also reads revoked_at).
    session.execute(delete(ApiSession).where(col(ApiSession.key_id) == key_id))
    return key


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)  # type: ignore[arg-type]
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.exec(query).all())


def authenticate(session: Session, raw: str) -> ApiKey | None:
    """The live key that ``raw`` is, or None (malformed, unknown, wrong secret, revoked)."""
    match = _SHAPE.match(raw.strip())
    if match is None:
        return None
    key = session.get(ApiKey, match.group(1))
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.secret_hash, hash_secret(match.group(2))):
        return None
    return key


# -- sessions of the auditor pages ------------------------------------------------------------
def open_session(session: Session, key: ApiKey, lifetime: timedelta) -> str:
    """A new session for ``key``; returns the token for the cookie (never stored)."""
    now = utcnow()
    # Expired sessions of this key go now: the table holds only live ones and a few more.
    session.execute(delete(ApiSession).where(col(ApiSession.key_id) == key.key_id,
                                             col(ApiSession.expires_at) < now))
    token = secrets.token_urlsafe(32)
    session.add(ApiSession(token_hash=hash_secret(token), key_id=key.key_id, created_at=now,
                           expires_at=now + lifetime))
    session.flush()
    return token


def session_key(session: Session, token: str) -> ApiKey | None:
    """The live key of a live session, or None (unknown, expired, signed out, revoked)."""
    if not token or len(token) > 128 or not token.isascii():
        return None
    found = session.get(ApiSession, hash_secret(token))
    if found is None or found.expires_at <= utcnow():
        return None
    key = session.get(ApiKey, found.key_id)
    if key is None or key.revoked_at is not None:
        return None
    return key


def close_session(session: Session, token: str) -> None:
    if token and len(token) <= 128 and token.isascii():
        session.execute(delete(ApiSession).where(
            col(ApiSession.token_hash) == hash_secret(token)))
