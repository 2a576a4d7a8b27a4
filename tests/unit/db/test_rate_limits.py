"""The API's rate per key is one bucket in PostgreSQL, whatever process takes from it."""

from __future__ import annotations

import time

from sqlmodel import select

from db.api_keys import create_key
from db.engine import get_engine, session_scope
from db.models import ApiKey, ApiRateBucket
from db.rate_limits import take
from orchestration.settings import Settings


def _key(settings: Settings, tenant: str) -> str:
    with session_scope(settings.database_url) as session:
        return create_key(session, tenant, "submitter").key_id


def test_a_full_bucket_allows_per_minute_then_says_how_long_to_wait(
        settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    key_id, other = _key(settings, "rate-a"), _key(settings, "rate-a")
    assert [take(engine, key_id, 60) for _ in range(60)] == [0.0] * 60
    wait = take(engine, key_id, 60)
    # One token a second flows back; about a second has to pass for the next one.
    assert 0.5 < wait <= 1.0
    assert take(engine, other, 60) == 0.0  # each key has its own bucket
    time.sleep(wait + 0.05)
    assert take(engine, key_id, 60) == 0.0
    assert take(engine, key_id, 60) > 0


def test_a_refused_request_takes_nothing_and_a_lower_limit_applies_at_once(
        settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    key_id = _key(settings, "rate-b")
    assert take(engine, key_id, 600) == 0.0
    # The bucket held 599 tokens; with the limit lowered to 2 it holds 2 at most.
    assert [take(engine, key_id, 2) > 0 for _ in range(4)] == [False, False, True, True]
    with session_scope(settings.database_url) as session:
        tokens = session.exec(select(ApiRateBucket.tokens).where(
            ApiRateBucket.key_id == key_id)).one()
    assert 0 <= tokens < 0.1  # refusals wrote nothing below zero


def test_the_bucket_goes_with_its_key(settings: Settings) -> None:
    engine = get_engine(settings.database_url)
    key_id = _key(settings, "rate-c")
    take(engine, key_id, 10)
    with session_scope(settings.database_url) as session:
        session.delete(session.get(ApiKey, key_id))
    with session_scope(settings.database_url) as session:
        assert session.get(ApiRateBucket, key_id) is None
