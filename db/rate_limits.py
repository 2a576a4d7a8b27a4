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
