"""The ``Idempotency-Key`` header, honoured on every create: the same key from the same
tenant returns the object the first request made, never a second one.

Jobs keep the key on their row (shared with ``manage.py jobs submit --idempotency-key``);
a batch's key is stored there with a ``batch:`` prefix, so a batch and a native job never
answer for each other. Files and labels record theirs in ``api_idempotency_key``.
"""

from __future__ import annotations

from fastapi import Header, Response

from ops.api.errors import ApiError

HEADER = "Idempotency-Key"
MAX_LENGTH = 200
BATCH_PREFIX = "batch:"
# Answered on a create that returned the first request's object (as Stripe does).
REPLAYED = "Idempotent-Replayed"
# Documented on the creates that answer 201: a replay answers 200.
REPLAY_RESPONSE: dict[int | str, dict[str, str]] = {
    200: {"description": "The object an earlier create with the same Idempotency-Key made "
                         "(header Idempotent-Replayed: true)"}}


def idempotency_key(
    value: str | None = Header(default=None, alias=HEADER,
                               description="Repeat a create safely: the same key returns "
                                           "the first result."),
) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_LENGTH or not value.isprintable():
        raise ApiError(400, f"{HEADER} must be 1 to {MAX_LENGTH} printable characters.",
                       param=HEADER, code="invalid_idempotency_key")
    return value


def mark_replayed(response: Response) -> None:
    response.headers[REPLAYED] = "true"
