"""The fleet collector's totals and the JSON line stream (ops/metrics.py, ops/logging.py),
on the real PostgreSQL of the run."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from ops.logging import JsonLines
from ops.metrics import _Tally

TABLE = "metrics_tally_test"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        c.execute(text(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, model text NOT NULL,"
                       " tokens int NOT NULL)"))
    try:
        yield engine
    finally:
        with engine.begin() as c:
            c.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        engine.dispose()


def _insert(connection: object, model: str, tokens: int) -> None:
    connection.execute(text(f"INSERT INTO {TABLE} (model, tokens) VALUES (:m, :t)"),  # type: ignore[attr-defined]
                       {"m": model, "t": tokens})


def _read(engine: Engine, tally: _Tally) -> dict[str, float]:
    with engine.connect() as c:
        return {label: v for (_, label), v in tally.read(c).items()}


def test_a_row_committed_late_with_a_lower_id_is_still_counted(engine: Engine) -> None:
    tally = _Tally(TABLE, "model", {"tokens": "sum(tokens)"})
    slow = engine.connect()
    slow_tx = slow.begin()
    _insert(slow, "a", 5)  # takes the lower id, commits last
    with engine.begin() as c:
        _insert(c, "a", 7)
    assert _read(engine, tally) == {"a": 7}
    # While the slow transaction is open the watermark may not pass its id.
    assert _read(engine, tally) == {"a": 7}
    assert tally.watermark == 0
    slow_tx.commit()
    slow.close()
    assert _read(engine, tally) == {"a": 12}
    assert _read(engine, tally) == {"a": 12}  # this read moved the watermark past both
    assert tally.watermark >= 2
    with engine.begin() as c:
        _insert(c, "b", 1)
    assert _read(engine, tally) == {"a": 12, "b": 1}


def test_json_lines_wraps_text_and_passes_json_through() -> None:
    raw = io.StringIO()
    stream = JsonLines(raw, "stderr")
    stream.write('{"event": "already json", "level": "info"}\nTraceback (most')
    stream.write(" recent call last):\n  File \"x.py\"\r\nprogress 50%\rprogress 100%\n")
    stream.write("[1, 2]\n")
    stream.close()
    lines = raw.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in events)
    assert events[0] == {"event": "already json", "level": "info"}
    assert [e["event"] for e in events[1:]] == [
        "Traceback (most recent call last):", '  File "x.py"', "progress 50%",
        "progress 100%", "[1, 2]"]
    assert {e["logger"] for e in events[1:]} == {"stderr"}
