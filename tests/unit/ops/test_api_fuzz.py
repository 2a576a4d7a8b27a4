"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis):
for every route, generated paths, queries, headers and bodies, sent with a valid admin key,
must get no 5xx and no response that breaks the schema (undocumented status, error body of
another shape, wrong content type).

Bounded so that CI runs it in seconds: a fixed number of examples per route, derandomized
(the same cases every run, so a failure reproduces), no deadline per example.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation

from db.api_keys import create_key
from db.engine import session_scope
from ops.api.app import create_app
from orchestration.settings import Settings

EXAMPLES_PER_ROUTE = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_app(settings: Settings) -> Iterator[FastAPI]:
    # Far above what the fuzzer sends: a 429 would hide what a route does with its input.
    roomy = settings.model_copy(update={"api_rate_limit_per_minute": 1_000_000})
    yield create_app(roomy)


@pytest.fixture(scope="module")
def admin_key(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        return create_key(session, "fuzz", "admin", "schemathesis").secret


def _fuzz(operation: APIOperation, mode: GenerationMode, key: str) -> None:
    @hypothesis_settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()


def _constrained(operation: APIOperation) -> bool:
    """Whether any input of ``operation`` can be invalid: a body, or a parameter with a
    type or bounds beyond free text (else the fuzzer looks for invalid input in vain)."""
    raw = operation.definition.raw
    if raw.get("requestBody"):
        return True
    free = ({"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]})
    for parameter in raw.get("parameters", []):
        schema = {k: v for k, v in parameter.get("schema", {}).items()
                  if k not in ("title", "description", "default")}
        if schema not in free:
            return True
    return False


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid-input", "invalid-input"])
def test_no_input_gives_a_5xx_or_breaks_the_schema(fuzzed_app: FastAPI, admin_key: str,
                                                   mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operations.append(result.ok())
    assert len(operations) >= 15  # every route of the Batch and native APIs
    failed: list[str] = []
    fuzzed = 0
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and not _constrained(operation):
            continue
        fuzzed += 1
        try:
            _fuzz(operation, mode, admin_key)
        except Unsatisfiable:
            # Invalid input cannot be made for it (e.g. only a free-form id in the path).
            assert mode == GenerationMode.NEGATIVE, operation.path
        except Exception as exc:  # every route's failure is gathered, then reported
            failed.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failed, "\n\n".join(failed)
    assert fuzzed >= 6, fuzzed  # the routes with bodies, bounded numbers or choices
