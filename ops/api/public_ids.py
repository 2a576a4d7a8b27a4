"""The ids of requests as the API shows them: opaque, not the database's sequence.

A request's row id counts every request of every tenant, so showing it tells a client how
busy the service is and invites guessing. The API shows ``req_`` and 16 hex digits instead:
the id put through a keyed permutation of 64-bit numbers (a Feistel network whose rounds
are HMAC-SHA256 under a secret every server process shares, kept in ``api_secret``). It
is reversible, so no lookup table is needed, and without the secret neither the next id nor
the count can be read from one. A string that is not one of ours decodes to None (404).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading

from db.engine import session_scope
from db.queries_api import shared_secret

PREFIX = "req_"
SECRET_NAME = "request-ids"
ROUNDS = 6  # four make a strong pseudorandom permutation (Luby-Rackoff); two spare
_SHAPE = re.compile(r"^req_([0-9a-f]{16})$")
_HALF = 0xFFFFFFFF
_MAX_ID = 2**63 - 1  # BIGINT

_keys: dict[str, bytes] = {}
_lock = threading.Lock()


class RequestIds:
    """Encode and decode request ids under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _round(self, number: int, half: int) -> int:
        digest = hmac.new(self._secret, bytes([number]) + half.to_bytes(4, "big"),
                          hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big")

    def encode(self, request_id: int) -> str:
        if not 0 < request_id <= _MAX_ID:
            raise ValueError(f"not a request id: {request_id}")
        left, right = request_id >> 32, request_id & _HALF
        for number in range(ROUNDS):
            left, right = right, left ^ self._round(number, right)
        return f"{PREFIX}{(left << 32) | right:016x}"

    def decode(self, public: str) -> int | None:
        match = _SHAPE.match(public)
        if match is None:
            return None
        value = int(match.group(1), 16)
        left, right = value >> 32, value & _HALF
        for number in reversed(range(ROUNDS)):
            left, right = right ^ self._round(number, left), left
        request_id = (left << 32) | right
        return request_id if 0 < request_id <= _MAX_ID else None


def request_ids(database_url: str) -> RequestIds:
    """The codec of this database, its secret read once per process (in a transaction of
    its own, so the secret is kept even when the caller's rolls back)."""
    with _lock:
        secret = _keys.get(database_url)
    if secret is None:
        with session_scope(database_url) as session:
            secret = shared_secret(session, SECRET_NAME)
        with _lock:
            _keys[database_url] = secret
    return RequestIds(secret)
