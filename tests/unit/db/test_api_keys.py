"""API keys are stored as hashes and checked against them."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from db.api_keys import ApiKeyError, authenticate, create_key, hash_secret, revoke_key
from db.models import ApiKey, Tenant


def test_a_created_key_authenticates_and_only_its_hash_is_stored(session: Session) -> None:
    created = create_key(session, "acme", "submitter", "billing batch")
    stored = session.exec(select(ApiKey).where(ApiKey.key_id == created.key_id)).one()
    secret = created.secret.split("_", 2)[2]
    assert secret not in stored.secret_hash and created.secret not in stored.secret_hash
    assert stored.secret_hash == hash_secret(secret)
    assert session.get(Tenant, "acme") is not None
    found = authenticate(session, created.secret)
    assert found is not None and found.tenant == "acme" and found.role == "submitter"


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
    lambda k: k.replace("bq_", "xx_", 1),  # not a blendq key
    lambda k: "",  # nothing
    lambda k: k.split("_", 2)[0] + "_000000000000_" + k.split("_", 2)[2],  # unknown id
])
def test_wrong_keys_do_not_authenticate(session: Session, mangle) -> None:  # type: ignore[no-untyped-def]
    created = create_key(session, "acme", "auditor")
    assert authenticate(session, mangle(created.secret)) is None


def test_a_revoked_key_no_longer_authenticates(session: Session) -> None:
    created = create_key(session, "acme", "admin")
    revoke_key(session, created.key_id)
    assert authenticate(session, created.secret) is None


def test_bad_tenant_or_role_is_refused_by_name(session: Session) -> None:
    with pytest.raises(ApiKeyError, match="tenant"):
        create_key(session, "no spaces please", "admin")
    with pytest.raises(ApiKeyError, match="role 'root'"):
        create_key(session, "acme", "root")
    with pytest.raises(ApiKeyError, match="no API key"):
        revoke_key(session, "ffffffffffff")
