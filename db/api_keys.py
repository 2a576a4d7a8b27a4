"""API keys: created and revoked by admins, checked on every HTTP request.

A key reads ``bq_<key_id>_<secret>``. Only a SHA-256 hash of the secret is stored: the
secret is 256 random bits, so a fast hash is enough (a slow password hash protects
guessable secrets, which these are not) and the check costs microseconds per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlmodel import Session, select

from db.models import ApiKey, ApiRole, Tenant, utcnow

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
