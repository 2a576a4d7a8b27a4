"""blendq's job options over HTTP: from a request (batch metadata or a native job's
``options``), else the tenant's defaults, else the registry's and settings' defaults.

Every problem names where the bad value came from (``metadata.blendq.top_k``,
``options.models``, ``tenant_defaults.ranker``), so a client knows what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestration.registry import Registry
from orchestration.submission import (
    AGGREGATIONS,
    STRATEGIES,
    JobOptions,
    SubmissionError,
    resolve_options,
)

NAMES = ("models", "ranker", "fuser", "top_k", "strategy", "aggregation", "chunk_size")
# Batch metadata keys that carry blendq's options, e.g. "blendq.models": "tiny-a,tiny-b".
METADATA_PREFIX = "blendq."
DEFAULTS_PREFIX = "tenant_defaults."
MAX_CHUNK_SIZE = 10_000
# resolve_options speaks in command-line flags; the API names fields.
_FLAGS = {"--models": "models", "--ranker": "ranker", "--fuser": "fuser",
          "--top-k": "top_k", "--chunk-size": "chunk_size", "--strategy": "strategy",
          "--aggregation": "aggregation"}


class OptionError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def from_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The ``blendq.*`` keys of a batch's metadata, without their prefix."""
    return {k[len(METADATA_PREFIX):]: v for k, v in metadata.items()
            if k.startswith(METADATA_PREFIX)}


def parse(name: str, value: Any, param: str) -> Any:
    """One option's value, from JSON or from a metadata string."""
    if name not in NAMES:
        raise OptionError(param, f"unknown option (expected one of {', '.join(NAMES)})")
    if name == "models":
        return _models(value, param)
    if name in ("top_k", "chunk_size"):
        return _integer(value, param, MAX_CHUNK_SIZE if name == "chunk_size" else None)
    if not isinstance(value, str) or not value.strip():
        raise OptionError(param, "must be a non-empty string")
    value = value.strip()
    if name == "strategy" and value not in STRATEGIES:
        raise OptionError(param, f"must be one of {', '.join(STRATEGIES)}, got {value!r}")
    if name == "aggregation" and value not in AGGREGATIONS:
        raise OptionError(param, f"must be one of {', '.join(AGGREGATIONS)}, got {value!r}")
    return value


def _models(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        names = [m.strip() for m in value.split(",") if m.strip()]
    elif isinstance(value, list) and all(isinstance(m, str) for m in value):
        names = [m.strip() for m in value if m.strip()]
    else:
        raise OptionError(param, "must be a list of model names or a comma-separated string")
    if not names:
        raise OptionError(param, "name at least one generator")
    return names


def _integer(value: Any, param: str, maximum: int | None) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(param, "must be an integer")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f"between 1 and {maximum}" if maximum else "at least 1"
        raise OptionError(param, f"must be {bound}, got {value}")
    return value


def job_options(given: Mapping[str, Any], prefix: str, defaults: Mapping[str, Any],
                registry: Registry, *, chunk_size: int, tenant: str,
                idempotency_key: str | None = None,
                metadata: dict[str, Any] | None = None) -> JobOptions:
    """What the request sets (its fields named ``prefix + name``), else the tenant's
    defaults, else blendq's own (every generator, top-k 3, the registry's ranker and fuser,
    the settings' chunk size)."""
    chosen = {name: parse(name, value, prefix + name) for name, value in given.items()}
    where = {name: prefix + name for name in chosen}
    for name, value in defaults.items():
        if name not in chosen:
            chosen[name] = parse(name, value, DEFAULTS_PREFIX + name)
            where[name] = DEFAULTS_PREFIX + name
    models = chosen.get("models") or [e.name for e in registry.by_role("generator")]
    top_k = chosen.get("top_k", 3)
    if where.get("top_k") != prefix + "top_k":
        # A default top-k is a most: a request naming two models fuses both.
        top_k = min(top_k, len(models))
    options = JobOptions(
        models=models, ranker=chosen.get("ranker"), fuser=chosen.get("fuser"), top_k=top_k,
        chunk_size=chosen.get("chunk_size", chunk_size),
        strategy=chosen.get("strategy", "full"),
        aggregation=chosen.get("aggregation", "max_logits"), tenant=tenant,
        idempotency_key=idempotency_key, metadata=metadata or {})
    try:
        return resolve_options(options, registry)
    except SubmissionError as exc:
        flag, _, message = str(exc).partition(": ")
        field = _FLAGS.get(flag)
        if field is None:
            raise
        raise OptionError(where.get(field, field), message) from None


def checked_defaults(values: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """Tenant defaults as an admin sets them: each parsed, together resolvable."""
    parsed = {name: parse(name, value, name) for name, value in values.items()}
    job_options(parsed, "", {}, registry, chunk_size=1, tenant="-")
    return parsed
