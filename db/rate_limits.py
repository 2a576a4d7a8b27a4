"""The HTTP API's request rate per key, shared by every server process through PostgreSQL.

A token bucket per key in ``api_rate_bucket``: ``per_minute`` tokens at most, refilled
continuously, one taken per request. Taking is one statement in a transaction of its own,
so the bucket's row is locked for that statement only, not for the request, and a request
that fails still counts (as it should: it was served).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

# The bucket as it would be now: its tokens plus what flowed in since it was last written.
_REFILLED = ("LEAST(:capacity, b.tokens + :per_second * "
             "EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at))")

# A new key starts full. The update happens only when a token is there to take: no row
# comes back when the request must wait, and nothing is written.
_TAKE = text(f"""
    INSERT INTO api_rate_bucket AS b (key_id, tokens, updated_at)
    VALUES (:key_id, :capacity - 1, clock_timestamp())
    ON CONFLICT (key_id) DO UPDATE
        SET tokens = {_REFILLED} - 1, updated_at = clock_timestamp()
        WHERE {_REFILLED} >= 1
    RETURNING b.tokens
""")
_WAIT = text(f"SELECT (1 - {_REFILLED}) / :per_second FROM api_rate_bucket AS b "
             "WHERE b.key_id = :key_id")


def take(engine: Engine, key_id: str, per_minute: int) -> float:
    """0 when the key may make a request now (a token is taken), else the seconds until
    it may."""
    values = {"key_id": key_id, "capacity": float(per_minute),
              "per_second": per_minute / 60.0}
    with engine.begin() as connection:
        if connection.execute(_TAKE, values).first() is not None:
            return 0.0
        wait = connection.execute(_WAIT, values).scalar()
    return max(float(wait or 0.0), 0.0)


# -- failed key attempts per client address -------------------------------------------------
# The same bucket over api_address_bucket: a failed attempt takes a token, and an address
# whose bucket is empty gets no key checked at all until it refills.
_ADDRESS_REFILLED = _REFILLED.replace("b.", "a.")
_CHARGE = text(f"""
    INSERT INTO api_address_bucket AS a (address, tokens, updated_at)
    VALUES (:address, :capacity - 1, clock_timestamp())
    ON CONFLICT (address) DO UPDATE
        SET tokens = GREATEST({_ADDRESS_REFILLED} - 1, 0), updated_at = clock_timestamp()
""")
_ADDRESS_WAIT = text(f"SELECT (1 - {_ADDRESS_REFILLED}) / :per_second "
                     "FROM api_address_bucket AS a WHERE a.address = :address")
# Rows of addresses that stopped failing: a full bucket is the same as no row.
_FORGET = text("DELETE FROM api_address_bucket WHERE updated_at < clock_timestamp() - "
               "make_interval(secs => :idle)")


def address_wait(engine: Engine, address: str, per_minute: int) -> float:
    """0 when keys from ``address`` may be checked now, else the seconds until they may."""
    values = {"address": address, "capacity": float(per_minute),
              "per_second": per_minute / 60.0}
    with engine.connect() as connection:
        wait = connection.execute(_ADDRESS_WAIT, values).scalar()
    return max(float(wait or 0.0), 0.0)


def charge_failure(engine: Engine, address: str, per_minute: int) -> None:
    """Count one failed key attempt from ``address``."""
    values = {"address": address, "capacity": float(per_minute),
              "per_second": per_minute / 60.0}
    with engine.begin() as connection:
        connection.execute(_CHARGE, values)
        # A bucket refills fully within a minute; an hour idle is long forgotten.
        connection.execute(_FORGET, {"idle": 3600.0})
