"""Human output of the admin commands: no Python reprs or None, nothing cut; queue names."""

from __future__ import annotations

import pytest

from ops.cli_jobs import status_lines
from ops.cli_jobs_admin import show_lines
from ops.tables import cell, plain_lines
from orchestration.queue_admin import QueueError, model_of, resolve_queue

QUEUES = ["gen.tiny-a", "gen.tiny-b", "rank", "fuse", "blendq.default", "blendq.dead"]


def test_plain_tables_keep_every_character_and_one_line_per_row() -> None:
    long_path = "/models/" + "x" * 150
    lines = plain_lines("models", ("name", "path"), [("tiny-a", long_path),
                                                     ("b", "two\nlines")])
    assert lines[0] == "models"
    assert lines[1].split() == ["name", "path"]
    assert lines[2] == f"tiny-a  {long_path}"
    assert lines[3] == "b       two lines"


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), ("", "-"), (True, "yes"),
                                              (0.5, "0.5000"), ({"done": 7}, '{"done": 7}'),
                                              (3, "3")])
def test_cells_are_never_python_reprs(value: object, shown: str) -> None:
    assert cell(value) == shown


def test_a_queue_is_named_by_itself_or_by_its_generator() -> None:
    assert resolve_queue("gen.tiny-a", QUEUES) == "gen.tiny-a"
    assert resolve_queue("tiny-a", QUEUES) == "gen.tiny-a"
    assert resolve_queue("blendq.dead", QUEUES) == "blendq.dead"
    with pytest.raises(QueueError, match=r"unknown queue 'tiny-z': blendq's queues are "
                                         r"gen.tiny-a, gen.tiny-b, rank"):
        resolve_queue("tiny-z", QUEUES)
    assert model_of("gen.tiny-a") == "tiny-a"
    with pytest.raises(QueueError, match="rank cannot be paused"):
        model_of("rank")


def test_status_of_a_running_job_in_words() -> None:
    summary = {"id": "job_1", "status": "in_progress", "chunks": {"done": 7, "running": 1},
               "request_counts": {"total": 64, "completed": 56, "failed": 0}, "errors": []}
    assert status_lines(summary) == [
        "job_1  in_progress  total 64  completed 56  failed 0  chunks: done 7  running 1"]


def test_show_of_a_running_job_has_no_none() -> None:
    stages = {
        "id": "job_1", "status": "in_progress", "tenant": "default", "models": ["a", "b"],
        "ranker": None, "fuser": None, "requests": {"total": 2, "pending": 2}, "chunks": {},
        "candidates": {"ok": 0, "failed": 1, "by_model": {
            "a": {"ok": 0, "failed": 1, "avg_latency_ms": None}}},
        "comparisons": 0, "rankings": 0, "fusions": 0,
        "errors": {"requests": [], "candidates": [], "validation": []},
        "timings": {"created_at": "2026-01-01T00:00:00+00:00", "in_progress_at": None,
                    "ended_at": None, "duration_s": None, "generation": [None, None],
                    "ranking": [None, None], "fusion": ["2026-01-01T00:00:01+00:00", None]},
        "retries": [],
    }
    text = "\n".join(show_lines(stages))
    assert "None" not in text
    assert "ranker default  fuser none" in text and "avg latency -" in text
    assert "not ended yet" in text and "generation not started" in text
    assert "fusion     2026-01-01T00:00:01+00:00 .. -" in text
