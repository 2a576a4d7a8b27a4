"""Task metric labels and the padding hook (workers/metrics.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY

from workers import metrics
from workers.ranking.pairranker import PairRanker


def test_labels_are_bounded_to_stage_and_model() -> None:
    kwargs = {"job_id": "job_x", "chunk_id": 7, "model": "tiny-a"}
    assert metrics.labels_of("blendq.generate", kwargs) == ("generate", "tiny-a")
    # Rank and fuse carry no model kwarg that means anything for them.
    assert metrics.labels_of("blendq.rank", kwargs) == ("rank", "")
    assert metrics.labels_of("celery.chord_unlock", kwargs) is None
    assert metrics.labels_of("blendq.queues_inspect", {}) is None


def test_reason_classes() -> None:
    import sqlalchemy.exc

    assert metrics.reason_class(SoftTimeLimitExceeded()) == "time_limit"
    assert metrics.reason_class(
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone"))) == "database"
    assert metrics.reason_class(ConnectionResetError()) == "broker"
    assert metrics.reason_class(ValueError("bad")) == "error"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_batches_counts_padding_of_each_batch() -> None:
    before = _sample("blendq_batch_tokens_total", stage="test", model="m", kind="padded")
    # [10, 6] padded to 2 x 10, [4] to 4: 24 tokens processed, 20 of them real.
    metrics.observe_batches("test", "m", [10, 6, 4], [[0, 1], [2]])
    assert _sample("blendq_batch_tokens_total", stage="test", model="m",
                   kind="padded") - before == 24
    assert _sample("blendq_batch_padding_ratio_count", stage="test", model="m") >= 2


def test_the_ranker_reports_its_padding(tiny_models: dict[str, Path]) -> None:
    ranker = PairRanker.from_pretrained(str(tiny_models["tiny-ranker"]), device="cpu")
    name = Path(str(ranker.backbone.config._name_or_path)).name
    before = _sample("blendq_batch_padding_ratio_count", stage="rank", model=name)
    pairs = [("q", "short", "a much longer candidate answer " * 5)] * 3 + [("q", "a", "b")]
    ranker.compare(pairs, batch_size=2)
    assert _sample("blendq_batch_padding_ratio_count", stage="rank", model=name) - before >= 2
    real = _sample("blendq_batch_tokens_total", stage="rank", model=name, kind="real")
    padded = _sample("blendq_batch_tokens_total", stage="rank", model=name, kind="padded")
    assert 0 < real <= padded


@pytest.mark.parametrize("state,outcome", [("SUCCESS", "succeeded"), ("RETRY", "retried")])
def test_postrun_counts_outcome_and_returned_requests(state: str, outcome: str) -> None:
    class Task:
        name = "blendq.generate"

    kwargs = {"job_id": "j", "chunk_id": 1, "model": "unit-m"}
    tasks = _sample("blendq_tasks_total", stage="generate", model="unit-m", outcome=outcome)
    failed = _sample("blendq_stage_requests_total", stage="generate", model="unit-m",
                     outcome="failed", reason="model_error")
    metrics._prerun(task_id="t1", task=Task(), kwargs=kwargs)
    metrics._postrun(task_id="t1", task=Task(), kwargs=kwargs, state=state,
                     retval={"generated": 3, "failed": 2})
    assert _sample("blendq_tasks_total", stage="generate", model="unit-m",
                   outcome=outcome) == tasks + 1
    expected = 2 if state == "SUCCESS" else 0
    assert _sample("blendq_stage_requests_total", stage="generate", model="unit-m",
                   outcome="failed", reason="model_error") == failed + expected
